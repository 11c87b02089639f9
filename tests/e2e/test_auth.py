"""AUTH and ACL: the filter keeps authenticated connections alive and probes them, and counts a
not-yet-authenticated connection's `-NOAUTH` as an answer; it never needs the password.

Two Redis set-ups: `requirepass`, and ACL (the default user off, a user `app`). Clients
authenticate in each form Redis has: `AUTH pass`, `AUTH user pass`, `HELLO 3 AUTH user pass`
(raw sockets, for byte-exact checks: a client must receive exactly Redis's replies to its own
commands, no stray frame), and redis-py asyncio, whose form is proven by Redis's
`INFO commandstats` and `CLIENT INFO` (RESP2 with credentials: `AUTH`; RESP3: `HELLO 3 AUTH`).

The filter's PING (`PING redis-idle-guard`) is answered `$16 redis-idle-guard` once
authenticated, `-NOAUTH Authentication required.` before, and `-NOPERM` for an ACL user who may
not PING: each reply is removed. Under Redis `timeout` and a NAT that drops forgotten flows
(tests/lab/faults.py, root only) the first command after an idle spell fails through plain
Envoy and succeeds through the filter.
Short spells: keepalive_interval 1s, ping_timeout 2s, probes (where tested) after 1s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Dict

import pytest

from lab import RawConnection, make_async_client, run_incident
from lab.faults import NatTimeout, RedisTimeout
from lab.resp import ExactClient, Frame

PASSWORD = "guard-test-pass"
USER, USER_PASSWORD = "app", "app-secret"
REQUIREPASS = {"requirepass": PASSWORD}
# redis.conf lines are "key value": each key here is a whole `user <name>` head, so every line
# is written. The default user is off: every connection must log in. `noping` may not PING:
# Redis answers the filter's PINGs `-NOPERM`, which proves the link as well.
NOPING = "noping"
ACL = {"user default": "off", f"user {USER}": f"on >{USER_PASSWORD} ~* &* +@all",
       f"user {NOPING}": f"on >{USER_PASSWORD} ~* &* +@all -ping"}

GUARD = {"keepalive_interval": "1s", "ping_timeout": "2s"}        # probes: default 25 s
PROBE_ONLY = {"keepalive_interval": "0s", "probe_after": "1s", "ping_timeout": "2s"}
KEEPALIVE_ONLY = {"keepalive_interval": "1s", "probe_after": "0s", "ping_timeout": "2s"}
IDLE_S = 3.0  # three keepalive intervals
NOAUTH = b"-NOAUTH Authentication required.\r\n"


def _hello_ok(frame: Frame, label: str) -> None:
    assert frame.kind == "%", f"{label}: HELLO → {frame.raw[:80]!r}"
    fields = dict(zip(frame.py()[::2], frame.py()[1::2]))
    assert fields[b"proto"] == 3, f"{label}: {fields}"


def _noauth_count(redis, **login) -> int:
    """How many `-NOAUTH` replies Redis has sent (INFO errorstats), the filter's included."""
    return redis.direct(**login).info("errorstats").get("errorstat_NOAUTH", {}).get("count", 0)


def _quiet(stats: Dict[str, float]) -> None:
    assert stats.get("keepalive.failed", 0) == 0, stats
    assert stats.get("probe.failed", 0) == 0, stats
    assert stats.get("passthrough", 0) == 0, stats
    assert stats.get("reconnect_signals", 0) == 0, stats


# (label, Redis set-up, redis-py kwargs, the login command redis-py must send, user)
_APP = dict(username=USER, password=USER_PASSWORD)
REDIS_PY_LOGINS = [
    ("py-resp2-password", "pw", dict(protocol=2, password=PASSWORD), "auth", "default"),
    ("py-resp3-password", "pw", dict(protocol=3, password=PASSWORD), "hello", "default"),
    ("py-resp2-user", "acl", dict(protocol=2, **_APP), "auth", USER),
    ("py-resp3-user", "acl", dict(protocol=3, **_APP), "hello", USER),
]
# (label, Envoy, raw login command)
RAW_LOGINS = [
    ("auth-pass", "pw", ("AUTH", PASSWORD)),
    ("hello-default-pass", "pw", ("HELLO", "3", "AUTH", "default", PASSWORD)),
    ("auth-user-pass", "acl", ("AUTH", USER, USER_PASSWORD)),
    ("hello-user-pass", "acl", ("HELLO", "3", "AUTH", USER, USER_PASSWORD)),
    ("auth-user-without-ping", "acl", ("AUTH", NOPING, USER_PASSWORD)),
    ("probe-auth-user-pass", "probe", ("AUTH", USER, USER_PASSWORD)),
    ("probe-hello-user-pass", "probe", ("HELLO", "3", "AUTH", USER, USER_PASSWORD)),
]


def _login_calls(admin) -> Dict[str, int]:
    """AUTH and HELLO calls so far, read by an admin client already logged in (the read adds
    neither)."""
    stats = admin.info("commandstats")
    return {cmd: stats.get(f"cmdstat_{cmd}", {}).get("calls", 0) for cmd in ("auth", "hello")}


async def _redis_py_login(label, address, kwargs, command, user, admin):
    """A redis.asyncio client (retries off) that logs in and writes; checks which login command
    reached Redis and as whom it is logged in."""
    before = _login_calls(admin)
    client = make_async_client(address, **kwargs)
    await client.set(f"auth:{label}", "before")
    after = _login_calls(admin)
    sent = {cmd: after[cmd] - before[cmd] for cmd in after}
    info = await client.client_info()
    print(label, "sent", sent, "user", info.get("user"), "resp", info.get("resp"))
    other = "auth" if command == "hello" else "hello"
    assert sent[command] == 1 and sent[other] == 0, (label, sent)
    assert info["user"] == user and str(info["resp"]) == str(kwargs["protocol"]), (label, info)
    return client


def test_authenticated_connections_keepalive_and_probe(lab, module):
    """Every login form, raw and through redis-py (and a user without +ping), then one idle
    spell: keepalives (and, with keepalives off, a probe before the first command) are
    answered and removed; each raw client
    gets exactly its own replies, each redis-py client reads back what it wrote (a stray frame
    would shift its replies)."""
    redis_pw = lab.redis(extra_config=REQUIREPASS, name="redis-requirepass")
    redis_acl = lab.redis(extra_config=ACL, name="redis-acl")
    envoys = {"pw": lab.envoy(redis_pw, module=module, plugin_config=GUARD, name="envoy-pw"),
              "acl": lab.envoy(redis_acl, module=module, plugin_config=GUARD, name="envoy-acl"),
              "probe": lab.envoy(redis_acl, module=module, plugin_config=PROBE_ONLY,
                                 name="envoy-probe")}
    admins = {"pw": redis_pw.direct(),
              "acl": redis_acl.direct(username=USER, password=USER_PASSWORD)}
    for admin in admins.values():
        admin.ping()  # logged in before any count is taken

    async def scenario() -> None:
        py_clients = []
        try:
            for label, setup, kwargs, command, user in REDIS_PY_LOGINS:
                py_clients.append((label, await _redis_py_login(
                    label, envoys[setup].address, kwargs, command, user, admins[setup])))
            raw_clients = []
            for label, envoy, login in RAW_LOGINS:
                c = ExactClient(envoys[envoy].address, label)
                raw_clients.append(c)
                if login[0] == "HELLO":
                    _hello_ok(c.ask(*login), label)
                else:
                    c.ask_ok(*login)
                c.set_then_get("before")
            await asyncio.sleep(IDLE_S)
            for c in raw_clients:
                c.set_then_get("after")
            for label, client in py_clients:
                await client.set(f"auth:{label}", "after")
                assert await client.get(f"auth:{label}") == b"after", label
            for c in raw_clients:
                c.assert_exact()
                c.close()
        finally:
            for _, client in py_clients:
                await client.aclose()

    asyncio.run(scenario())
    for name in ("pw", "acl"):
        stats = envoys[name].guard_stats()
        print(name, stats)
        _quiet(stats)
        connections = sum(1 for login in REDIS_PY_LOGINS + RAW_LOGINS if login[1] == name)
        assert stats["keepalive.answered"] >= connections * 2, stats  # 3 s at 1 s
    noperm = admins["acl"].info("errorstats").get("errorstat_NOPERM", {}).get("count", 0)
    print(f"{noperm} filter PINGs answered -NOPERM")
    assert noperm >= 2, noperm
    stats = envoys["probe"].guard_stats()
    print("probe", stats)
    _quiet(stats)
    assert stats["keepalive.sent"] == 0 and stats["probe.passed"] == 2, stats


def test_keepalive_before_auth_gets_noauth(lab, module):
    """A connection idle before it authenticates: the filter's PING is answered `-NOAUTH`,
    which counts as alive and is removed; the client then logs in and works, and never sees a
    `-NOAUTH` it did not cause.

    A connection that has sent nothing at all: the native build keeps it alive like any other
    (with probes off); the Wasm build cannot send on it (no paused read buffer), so with probes
    off it closes it at keepalive_interval (the fallback). With probes on, both leave it to the
    probe: its first command (the AUTH) waits for a PING answered `-NOAUTH`."""
    redis_pw = lab.redis(extra_config=REQUIREPASS, name="redis-requirepass")
    redis_acl = lab.redis(extra_config=ACL, name="redis-acl")
    redis_silent = lab.redis(extra_config=ACL, name="redis-silent")
    guard_pw = lab.envoy(redis_pw, module=module, plugin_config=GUARD, name="envoy-pw")
    guard_acl = lab.envoy(redis_acl, module=module, plugin_config=GUARD, name="envoy-acl")
    keepalive_only = lab.envoy(redis_silent, module=module, plugin_config=KEEPALIVE_ONLY,
                               name="envoy-keepalive-only")
    prober = lab.envoy(redis_silent, module=module, plugin_config=PROBE_ONLY, name="envoy-probe")
    logins = {"pw": {"password": PASSWORD}, "acl": {"username": USER, "password": USER_PASSWORD}}
    # The lab's readiness check was answered -NOAUTH too: count from here.
    baseline = {name: _noauth_count(r, **logins["pw" if r is redis_pw else "acl"])
                for name, r in (("pw", redis_pw), ("acl", redis_acl), ("silent", redis_silent))}

    # Sent a command before logging in (its own -NOAUTH is part of what it asked for).
    ping_first = ExactClient(guard_pw.address, "ping-first")
    assert ping_first.ask("PING").raw == NOAUTH
    hello_first = ExactClient(guard_acl.address, "hello-first")
    refused = hello_first.ask("HELLO", "3")
    assert refused.kind == "-" and refused.value.startswith("NOAUTH"), refused.raw
    # Sent nothing at all.
    silent_keepalive = ExactClient(keepalive_only.address, "silent-keepalive-only")
    silent_probe = ExactClient(prober.address, "silent-probe")
    time.sleep(IDLE_S)

    ping_first.ask_ok("AUTH", PASSWORD)
    ping_first.set_then_get("after")
    _hello_ok(hello_first.ask("HELLO", "3", "AUTH", USER, USER_PASSWORD), "hello-first")
    hello_first.set_then_get("after")
    silent_probe.ask_ok("AUTH", USER, USER_PASSWORD)
    silent_probe.set_then_get("after")
    if module.native:
        silent_keepalive.ask_ok("AUTH", USER, USER_PASSWORD)
        silent_keepalive.set_then_get("after")
    else:
        _, got, _ = silent_keepalive.conn.wait_eof(timeout=1)
        assert got == b"", got
    clients = [ping_first, hello_first, silent_probe] + ([silent_keepalive] * module.native)
    for c in clients:
        c.assert_exact()
        c.close()

    # Redis sent more -NOAUTH than the clients saw: the rest answered the filter's PINGs.
    for name, redis, envoy in (("pw", redis_pw, guard_pw), ("acl", redis_acl, guard_acl)):
        stats = envoy.guard_stats()
        print(envoy.name, stats)
        _quiet(stats)
        seen_by_client = 1
        answered_noauth = _noauth_count(redis, **logins[name]) - baseline[name] - seen_by_client
        print(f"{envoy.name}: {answered_noauth} filter PINGs answered -NOAUTH")
        assert answered_noauth >= 2 and stats["keepalive.answered"] >= answered_noauth, stats
    probe_stats = prober.guard_stats()
    print(prober.name, probe_stats)
    _quiet(probe_stats)
    assert probe_stats["probe.passed"] == 1, probe_stats
    ka_stats = keepalive_only.guard_stats()
    print(keepalive_only.name, ka_stats)
    if module.native:
        _quiet(ka_stats)
        assert ka_stats["keepalive.answered"] >= 2, ka_stats
    else:
        assert ka_stats["keepalive.refused"] == 1 and ka_stats["reconnect_signals"] == 1, ka_stats
    noauth = _noauth_count(redis_silent, **logins["acl"]) - baseline["silent"]
    assert noauth >= 1 + (2 if module.native else 0), noauth  # the probe's (+ keepalives)


# (fault, its Redis set-up, redis-py logins: (label, kwargs), the plain chain's error)
def _fault_cases():
    pw = dict(password=PASSWORD)
    user = dict(username=USER, password=USER_PASSWORD)
    return [
        (RedisTimeout(cutoff_s=2).with_redis_config(REQUIREPASS),
         [("resp3-hello-auth", dict(protocol=3, **pw)), ("resp2-auth", dict(protocol=2, **pw))],
         "Connection closed by server."),
        (NatTimeout("drop", cutoff_s=2).with_redis_config(ACL),
         [("resp3-hello-auth-user", dict(protocol=3, **user)),
          ("resp2-auth-user", dict(protocol=2, **user))],
         "TimeoutError"),
    ]


@pytest.mark.needs_root
def test_faults_authenticated_clients(lab, module):
    """Redis `timeout 2` (requirepass) and a NAT that silently drops flows idle for 2 s (ACL),
    side by side; authenticated redis.asyncio clients with retries off, one idle spell of 4 s.
    Through plain Envoy the first command after it fails; through the filter it succeeds."""
    cases = _fault_cases()
    with contextlib.ExitStack() as stack:
        runs = []
        for fault, logins, _ in cases:
            stack.enter_context(fault)
            plain = lab.envoy(fault.address, name=f"envoy-plain-{fault.key}")
            guard = lab.envoy(fault.address, module=module, plugin_config=GUARD,
                              name=f"envoy-guard-{fault.key}")
            for label, kwargs in logins:
                for chain, envoy in (("plain", plain), ("guard", guard)):
                    runs.append((fault, chain, label, envoy.address, kwargs))

        async def all_runs():
            return await asyncio.gather(*(
                run_incident(address, rounds=1, idle_s=4.0, label=f"{fault.key}-{chain}-{label}",
                             socket_timeout=2.0, **kwargs)
                for fault, chain, label, address, kwargs in runs))

        results = asyncio.run(all_runs())
    expected_error = {fault.key: error for fault, _, error in cases}
    for (fault, chain, label, _, _), r in zip(runs, results):
        print(f"({fault.key}) {chain:5} {label:22} {r.summary()}")
    for (fault, chain, label, _, _), r in zip(runs, results):
        if chain == "plain":
            assert len(r.errors) == 1, f"{fault!r} did not bite {label}: {r.summary()}"
            assert expected_error[fault.key] in r.errors[0].error, r.errors[0].error
        else:
            assert not r.errors, f"{fault!r}: {label} through the filter: {r.summary()}"
    for envoy in lab.envoys:
        if envoy.with_filter:
            stats = envoy.guard_stats()
            print(envoy.name, stats)
            _quiet(stats)
            assert stats["keepalive.answered"] >= 2 * 3, stats
