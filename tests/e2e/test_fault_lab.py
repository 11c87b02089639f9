"""The fault lab (tests/lab/faults.py): every idle-connection fault bites through plain Envoy
tcp_proxy, and through redis-idle-guard the claims hold for redis.asyncio RESP3.

Each test builds its fault (network namespaces: Envoy → router → Redis), runs one round of
"fresh connection, SET/GET, idle 4 s (the fault armed mid-idle where it starts then), SET"
through plain Envoy and through the filter side by side, and checks the first command after
the idle spell. Clients have every retry off. The filter runs at keepalive 1s / ping_timeout 2s,
below the faults' 2 s cutoffs. Needs root (namespaces, iptables), as `make test` has.

Two redis.asyncio RESP3 shapes: the default pool (which, with redis-py 8.1's maintenance
notifications on, lends a pooled connection without looking at it, so it hits a closed one) and
the same pool with maintenance notifications off (which checks at checkout and reconnects after
a FIN: a "client that reconnects on close").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import threading
import time

import pytest

from lab import RawConnection
from lab.faults import (BlackHole, NatTimeout, RedisCrashRestart, RedisRestart, RedisTimeout,
                        SlowRedis, sysctls_are_per_netns)
from lab.matrix import ClientSpec, Outcome, Settings, one_round

pytestmark = pytest.mark.needs_root

S = Settings(rounds=1)
GUARD = {"keepalive_interval": S.keepalive, "ping_timeout": S.ping_timeout}
RESP3 = ClientSpec("resp3", "redis.asyncio RESP3 pool", "py-async", 3)
RESP3_RECONNECTS = ClientSpec("resp3-checked", "redis.asyncio RESP3 pool, maint. notif. off",
                              "py-async", 3, maint_off=True, reconnects_on_close=True)
SYNC = ClientSpec("sync", "redis-py sync pool (RESP3)", "py-sync", 3, reconnects_on_close=True)


def _envoys(lab, module, fault):
    return {"plain": lab.envoy(fault.address, name="envoy-plain"),
            "guard": lab.envoy(fault.address, module=module, plugin_config=GUARD, name="envoy-guard")}


def _round(lab, module, fault, clients, on_armed=None, envoys=None):
    """One round through plain Envoy and through the filter at once: ({(chain, client): Outcome},
    the guarded Envoy)."""
    envoys = envoys or _envoys(lab, module, fault)
    guard = envoys["guard"]
    pairs = [(chain, c) for chain in ("plain", "guard") for c in clients]
    sessions = [(envoys[chain].address, c, f"lab:{fault.key}:{chain}:{c.key}")
                for chain, c in pairs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = asyncio.run(one_round(fault, sessions, S, pool, on_armed))
    result = {(chain, c.key): o for (chain, c), o in zip(pairs, outcomes)}
    for (chain, key), o in result.items():
        print(f"({fault.key}) {chain:5} {key:14} ok={o.ok} latency={o.latency_ms} ms "
              f"error={o.error!r}")
        assert o.harness_error is None, f"{chain}/{key}: {o.harness_error}"
    print("filter stats:", guard.guard_stats())
    return result, guard


def _assert_ok(o: Outcome, what: str) -> None:
    assert o.ok, f"{what}: {o.error}"
    assert o.verified, f"{what}: GET after the command did not read it back"
    # Far below the clients' 2 s timeout (it did not wait on a dead link), with room for a
    # busy 2-core machine: a tighter bound measures the machine, not the filter.
    limit_ms = S.command_timeout_s * 1000 * 0.75
    assert o.latency_ms < limit_ms, f"{what}: first command after idle took {o.latency_ms:.0f} ms"


def test_router_namespace_is_private_and_forgets_idle_flows():
    fault = NatTimeout("drop", cutoff_s=2)
    with fault:
        names = (fault.topology.nat_ns, fault.topology.redis_ns, fault.topology.root_if)
        for key in ("net.netfilter.nf_conntrack_tcp_timeout_established",
                    "net.netfilter.nf_conntrack_tcp_loose"):
            assert sysctls_are_per_netns(fault.topology, key), f"{key} is not per netns"
        with open("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established") as f:
            assert f.read().strip() != "2", "the root namespace's timeout was changed"
        before = fault.measure_forget(1.5)
        after = fault.measure_forget(2.5)
        print(before, after)
        assert before["conntrack_entry"] and before["outcome"] == "reply", before
        assert not after["conntrack_entry"] and after["outcome"] == "silence", after
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert names[0] not in netns and names[1] not in netns, netns
    assert f" {names[2]}@" not in links and f" {names[2]}:" not in links, links


def test_a_nat_silent_drop(lab, module):
    with NatTimeout("drop", cutoff_s=2) as fault:
        r, guard = _round(lab, module, fault, [RESP3])
    plain = r[("plain", "resp3")]
    assert not plain.ok and plain.error.startswith("TimeoutError"), plain
    assert plain.latency_ms >= S.command_timeout_s * 1000 * 0.9, plain  # it hung until timeout
    _assert_ok(r[("guard", "resp3")], "through the filter")
    stats = guard.guard_stats()
    assert stats["keepalive.answered"] >= 3 and stats["keepalive.failed"] == 0, stats


def test_b_nat_reset(lab, module):
    with NatTimeout("reset", cutoff_s=2) as fault:
        r, _ = _round(lab, module, fault, [RESP3])
    plain = r[("plain", "resp3")]
    assert not plain.ok and "reset" in plain.error.lower(), plain
    _assert_ok(r[("guard", "resp3")], "through the filter")


def test_c_redis_timeout(lab, module):
    with RedisTimeout(cutoff_s=2) as fault:
        r, _ = _round(lab, module, fault, [RESP3])
    plain = r[("plain", "resp3")]
    assert not plain.ok and "Connection closed by server." in plain.error, plain
    _assert_ok(r[("guard", "resp3")], "through the filter")


def test_d_redis_restart(lab, module):
    """Redis's close reaches the client through plain Envoy too (Envoy relays the FIN); the
    filter counts it as a reconnect signal, and a pool that reconnects on close carries on.
    The default RESP3 pool does not look at its connection and fails either way.

    Controls, through plain Envoy: the fault bites the default pool; it does not bite the pool
    that reconnects on close (declared in matrix.EXPECT_NO_BITE): what the filter adds under
    (d) is the count, and that it does not keep a dead connection from the pool."""
    with RedisRestart() as fault:
        r, guard = _round(lab, module, fault, [RESP3, RESP3_RECONNECTS])
    plain = r[("plain", "resp3")]
    assert not plain.ok and "Connection closed by server." in plain.error, plain
    guarded = r[("guard", "resp3")]
    assert not guarded.ok and "Connection closed by server." in guarded.error, guarded
    checked = r[("plain", "resp3-checked")]
    assert checked.ok, ("(d) bit a pool that reconnects on close through plain Envoy: re-read "
                        f"matrix.EXPECT_NO_BITE for (d): {checked}")
    _assert_ok(r[("guard", "resp3-checked")], "reconnecting pool through the filter")
    assert guard.guard_stat("reconnect_signals", 0) >= 1


def test_e_black_hole(lab, module):
    """Established flows are dropped both ways from mid-idle. Plain Envoy: the command hangs
    until the client's timeout. The filter's PING goes unanswered, so it closes the idle client
    after keepalive_interval + ping_timeout; a pool that reconnects on close then succeeds."""
    with BlackHole() as fault:
        r, guard = _round(lab, module, fault, [RESP3_RECONNECTS])
        plain = r[("plain", "resp3-checked")]
        assert not plain.ok and plain.error.startswith("TimeoutError"), plain
        _assert_ok(r[("guard", "resp3-checked")], "reconnecting pool through the filter")
        stats = guard.guard_stats()
        assert stats["reconnect_signals"] >= 1 and stats["keepalive.failed"] >= 1, stats
        # When does the idle client hear it? One raw connection, black-holed right after its
        # last reply: the filter's PING goes out 1 s later and is given up 2 s after that. The
        # clock starts at the reply, as the filter's does, not after arm()'s conntrack call.
        with RawConnection(guard.address) as c:
            assert c.command("PING").raw == b"+PONG\r\n"
            t_reply = time.monotonic()
            fault.arm()
            armed_s = time.monotonic() - t_reply
            _, got, reset = c.wait_eof(timeout=8)
            waited = time.monotonic() - t_reply
            fault.disarm()
        print(f"black hole: idle client closed {waited:.2f}s after its last reply (reset={reset}; "
              f"arming took {armed_s:.2f}s)")
        # Not before 1 s + ping_timeout; and by the end of that timeout, or of the next one if
        # arming took longer than the first keepalive interval (then that PING was answered).
        assert got == b"" and 2.5 <= waited <= 5.0, waited


def test_f_slow_redis_is_not_closed(lab, module):
    """A control: Redis answers everything (the filter's PINGs too) up to 1.2 s late, below
    ping_timeout. Nothing may fail, and the filter must not take slowness for death."""
    probe = {"ping_s": 0.0}

    def slow_probe():  # proof that the fault is real: a direct PING waits for the stall
        # Stalls run back to back with 50 ms gaps, from whenever the fault's thread gets going:
        # one PING may land in a gap or before the first stall, so try a few, 0.3 s after the
        # last answer (inside the next stall), and keep the longest wait.
        with RawConnection(fault.address) as c:
            for _ in range(4):
                time.sleep(0.3)
                t0 = time.monotonic()
                c.command("PING", timeout=5)
                probe["ping_s"] = max(probe["ping_s"], time.monotonic() - t0)
                if probe["ping_s"] >= 0.8:
                    break

    fault = SlowRedis(stall_s=1.2)
    with fault:
        r, guard = _round(lab, module, fault, [RESP3], on_armed=slow_probe)
    print(f"a direct PING during the stall took {probe['ping_s']:.2f}s; stalls: {fault.stalls}")
    assert probe["ping_s"] >= 0.8
    for chain in ("plain", "guard"):
        o = r[(chain, "resp3")]
        assert o.ok and o.verified, (chain, o)
    stats = guard.guard_stats()
    assert stats["reconnect_signals"] == 0 and stats["keepalive.failed"] == 0, stats
    assert stats["keepalive.answered"] >= 2, stats


def test_g_crash_restart_filter_closes_at_once(lab, module):
    """Redis restarts and its FINs are lost: through plain Envoy an idle connection looks fine
    until its next command gets a RST, even for a pool that checks at checkout. The filter's
    next PING meets that RST, so the idle client is closed about keepalive_interval after its
    last reply and a sync pool (which notices the close at checkout) carries on.

    Envoy relays the upstream RST to the client as a RST, which redis.asyncio's checkout check
    does not notice (it sees only EOF): its result is printed, not asserted (see the matrix)."""
    closed = {}
    fault = RedisCrashRestart()

    def watch(conn: RawConnection, name: str) -> None:
        t0 = time.monotonic()
        try:
            waited, _, reset = conn.wait_eof(timeout=5)
            closed[name] = (waited, reset)
        except TimeoutError:
            closed[name] = None
        closed[name + "_since_arm"] = time.monotonic() - t0

    with fault:
        plain_raw = guard_raw = None
        threads = []

        def on_armed():
            for conn, name in ((plain_raw, "plain"), (guard_raw, "guard")):
                t = threading.Thread(target=watch, args=(conn, name), daemon=True)
                t.start()
                threads.append(t)

        envoys = _envoys(lab, module, fault)
        plain_raw = RawConnection(envoys["plain"].address)
        guard_raw = RawConnection(envoys["guard"].address)
        try:
            for c in (plain_raw, guard_raw):
                assert c.command("PING").raw == b"+PONG\r\n"
            r, guard = _round(lab, module, fault, [SYNC, RESP3_RECONNECTS], on_armed, envoys)
            for t in threads:
                t.join(7)
        finally:
            plain_raw.close()
            guard_raw.close()
    print("raw connections:", closed)
    assert closed["plain"] is None, "plain Envoy closed the idle connection: not a silent fault"
    assert closed["guard"] is not None, "the filter did not close the idle connection"
    # The next PING (each 1 s of quiet) meets the RST: about 1 s after the restart, with a
    # second of room for a busy machine; plain Envoy stays silent for the watch's whole 5 s.
    assert closed["guard"][0] <= 3.0, closed
    sync_plain, sync_guard = r[("plain", "sync")], r[("guard", "sync")]
    assert not sync_plain.ok and "reset" in sync_plain.error.lower(), sync_plain
    _assert_ok(sync_guard, "sync pool through the filter")
    assert guard.guard_stat("reconnect_signals", 0) >= 1
    print("redis.asyncio (checks at checkout) through the filter:", r[("guard", "resp3-checked")])


def test_matrix_claims_hold_for_every_client(module, tmp_path):
    """The short idle-death matrix for faults (a)-(f), every client (redis-py asyncio RESP3,
    RESP2, sync, and node's ioredis), `--strict`: exits 1 if any claim for the filter column
    fails, if a cell where the fault did not bite plain tcp_proxy is not declared so (with its
    reason) in matrix.EXPECT_NO_BITE, or if a fault bit no client at all. (g), a Redis crash
    relayed to the client as a RST, is reported by `make matrix` and is not claimed (see
    docs/idle-death-matrix.md)."""
    import sys
    from pathlib import Path

    matrix = Path(__file__).resolve().parents[1] / "lab" / "matrix.py"
    proc = subprocess.run(
        [sys.executable, str(matrix), "--short", "--faults", "abcdef", "--strict",
         "--module", str(module), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    print(proc.stdout[-12000:])
    print(proc.stderr[-4000:])
    assert proc.returncode == 0, ("a matrix claim for the filter failed, or a cell the fault did "
                                  "not bite is not declared (table above)")
    assert "ioredis" in proc.stdout, "the non-Python client did not run"
    assert "Declared not to bite tcp_proxy alone" in proc.stdout
    assert "VACUOUS" not in proc.stdout
