"""Pooled mode (envoy/pooled.yaml): Envoy's redis_proxy → cluster on an internal listener →
[redis-idle-guard + tcp_proxy] → Redis, on the real Envoy 1.40 binary and the real fault lab.

redis_proxy multiplexes every client onto ONE upstream connection per worker ("leg"), answers
the client's PING itself, never pings or expires its legs and never retries. The filter on the
internal listener owns every leg. Each fault test runs, side by side and each on its own Envoy:
  plain  redis_proxy alone, straight to Redis (what teams run today)
  guard  redis_proxy → internal leg [filter + tcp_proxy] (the shipped pooled chain)
with three RESP2 clients (redis_proxy speaks only RESP2), every retry off, each keeping one
pool for the whole run: redis.asyncio ConnectionPool (the incident's client), redis-py's sync
ConnectionPool, and node's ioredis. A session: warm up, then ROUNDS idle spells of IDLE_S (above
the fault's cutoff), each followed by the measured SET (+ GET) and a follow-up SET/GET.

No assertion is on a duration (the machine is small and shared); latencies are printed.
Needs root for the fault lab (namespaces, iptables).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time

import pytest

from lab import RawConnection
from lab.envoy_proxy import envoy_binary
from lab.faults import NatTimeout, RedisTimeout
from lab.pooled import POOLED_CLIENTS, PooledEnvoy, SessionResult, run_sessions
from lab.procs import REPO_ROOT, wait_until

ROUNDS = 3
IDLE_S = 4.0              # idle spell: above both faults' cutoffs (2 s NAT, 2-3 s Redis timeout)
CUTOFF_S = 2
OP_TIMEOUT = "2s"         # redis_proxy settings.op_timeout
COMMAND_TIMEOUT_S = 4.0   # clients' own timeout, above op_timeout: the error comes from Envoy
GUARD = {"keepalive_interval": "1s", "ping_timeout": "2s", "probe_after": "2s"}
CLIENTS = list(POOLED_CLIENTS)

root_only = pytest.mark.needs_root


@pytest.fixture
def pooled(lab):
    """Factory: start a PooledEnvoy registered with the lab (its log is dumped and its VM
    checked like any lab Envoy); every one is stopped after the test."""
    with contextlib.ExitStack() as stack:
        def start(upstream, **kwargs) -> PooledEnvoy:
            e = PooledEnvoy(upstream, **kwargs)
            lab.envoys.append(e)
            return stack.enter_context(e)
        yield start


def _side_by_side(pooled, fault, module, clients=CLIENTS, rounds=ROUNDS, idle_s=IDLE_S,
                  guard=GUARD):
    """plain and guard Envoys, one per client each; all sessions at once. Returns
    ({(chain, client): SessionResult}, {(chain, client): {"pool": ..., "filter": ...}}), the
    stats taken right after the sessions, while the fault (and its Redis) is still up."""
    envoys = {}
    for client in clients:
        envoys[("plain", client)] = pooled(fault.address, internal_leg=False,
                                           op_timeout=OP_TIMEOUT, name=f"plain-{client}")
        envoys[("guard", client)] = pooled(fault.address, module=module, plugin_config=guard,
                                           op_timeout=OP_TIMEOUT, name=f"guard-{client}")
    keys = list(envoys)
    sessions = [(client, envoys[(chain, client)].address, f"pooled:{fault.key}:{chain}:{client}")
                for chain, client in keys]
    results = asyncio.run(run_sessions(sessions, rounds=rounds, idle_s=idle_s,
                                       command_timeout_s=COMMAND_TIMEOUT_S))
    out = dict(zip(keys, results))
    snaps = {key: {"pool": e.pool_stats(), "filter": e.guard_stats() if e.with_filter else {}}
             for key, e in envoys.items()}
    for (chain, client), r in out.items():
        snap = snaps[(chain, client)]
        print(f"({fault.key}) {chain:5} {r.summary()}")
        print(f"        pool: {snap['pool']}")
        if snap["filter"]:
            top = {k: v for k, v in snap["filter"].items() if not k.startswith("upstream.")}
            print(f"        filter: {top}")
    for key, r in out.items():
        assert r.harness_error is None, f"{key}: {r.harness_error}"
        assert len(r.spells) == rounds, f"{key}: {len(r.spells)} spells measured"
    return out, snaps


def _assert_clean(r: SessionResult, snap, what: str) -> None:
    assert not r.errors, f"{what}: {r.summary()}"
    assert all(s.verified for s in r.spells), f"{what}: a GET did not read its SET back"
    assert not [s for s in r.spells if s.followup_error], f"{what}: {r.summary()}"
    pool = snap["pool"]
    # One leg for the whole run: the filter kept it alive, nothing had to be replaced.
    assert pool["legs_opened"] == 1 and pool["legs_active"] == 1, (what, pool)
    assert pool["upstream_rq_timeout"] == 0, (what, pool)
    stats = snap["filter"]
    assert stats["connections"] == 1, (what, stats)      # the filter follows the leg
    assert stats["keepalive.answered"] >= ROUNDS * 2, (what, stats)
    assert stats["keepalive.failed"] == 0 and stats["reconnect_signals"] == 0, (what, stats)
    assert stats["passthrough"] == 0, (what, stats)


def _redis_pings(fault_or_redis) -> int:
    """PING calls Redis itself has answered (INFO commandstats), over a fresh connection."""
    redis = getattr(fault_or_redis, "redis", fault_or_redis)
    client = redis.direct()
    try:
        return int(client.info("commandstats").get("cmdstat_ping", {}).get("calls", 0))
    finally:
        client.close()


# -- the shipped bootstrap ----------------------------------------------------------------------
def test_shipped_pooled_yaml_validates(wasm_module):
    """`envoy --mode validate -c envoy/pooled.yaml` from the repo root (it loads the module)."""
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", "envoy/pooled.yaml",
                           "--disable-hot-restart"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_shipped_pooled_yaml_runs_and_the_filter_owns_the_leg(lab, wasm_module, pooled):
    """envoy/pooled.yaml (the Wasm build) as shipped (ports, Redis address, module path moved
    into the lab; a 1 s keepalive): commands work, redis_proxy's leg goes through the internal
    listener and the filter, and the filter's PINGs (not the application's) reach Redis."""
    redis = lab.redis()
    e = PooledEnvoy.from_shipped_yaml(redis, module=wasm_module, plugin_config={
        "keepalive_interval": "1s", "ping_timeout": "2s", "probe_after": "2s"})
    lab.envoys.append(e)
    with e:
        pings_at_start = _redis_pings(redis)
        with RawConnection(e.address) as a, RawConnection(e.address) as b:
            assert a.command("SET", "shipped", "yes").raw == b"+OK\r\n"
            assert b.command("GET", "shipped").raw == b"$3\r\nyes\r\n"
            # Two clients, one pooled leg, which the filter follows.
            pool = e.pool_stats()
            assert pool["legs_opened"] == 1 and pool["downstream_cx_total"] == 2, pool
            assert e.guard_stat("connections") == 1
            assert e.stats(r"^listener\.envoy_internal_redis_guard_leg\.downstream_cx_total$") \
                == {"listener.envoy_internal_redis_guard_leg.downstream_cx_total": 1}
            for _ in range(5):  # answered by redis_proxy itself
                assert a.command("PING").raw == b"+PONG\r\n"
            e.wait_for_guard_stat("keepalive.answered", lambda v: v >= 2, timeout=15)
            answered = e.guard_stat("keepalive.answered")
            redis_pings = _redis_pings(redis) - pings_at_start
            sent = e.guard_stat("keepalive.sent")
            # Redis answered the filter's PINGs and none of the application's five: those
            # would put it at least 5 above what the filter had sent.
            assert answered <= redis_pings <= sent, (answered, redis_pings, sent)
            # The PONGs never reached redis_proxy: the clients get exactly their own replies.
            assert a.command("GET", "shipped").raw == b"$3\r\nyes\r\n"
            assert b.command("ECHO", "x").raw == b"$1\r\nx\r\n"
        stats = e.guard_stats()
        print("shipped pooled.yaml:", stats, e.pool_stats())
        assert stats["keepalive.failed"] == 0 and stats["passthrough"] == 0, stats
        assert e.pool_stats()["legs_opened"] == 1


def test_without_the_internal_upstream_socket_and_one_leg_per_worker(lab, module, pooled):
    """The chain also works without the internal_upstream transport socket (it is optional on
    1.40), and with 2 workers each worker's leg is guarded: keepalives on every leg."""
    redis = lab.redis()
    e = pooled(redis, module=module, plugin_config=GUARD, internal_upstream=False, concurrency=2)
    conns = [RawConnection(e.address) for _ in range(8)]
    try:
        for i, c in enumerate(conns):
            assert c.command("SET", f"w{i}", "1").raw == b"+OK\r\n"
        legs = e.pool_stats()["legs_opened"]
        assert 1 <= legs <= 2
        assert e.guard_stat("connections") == legs
        e.wait_for_guard_stat("keepalive.answered", lambda v: v >= 2 * legs, timeout=15)
        for i, c in enumerate(conns):
            assert c.command("GET", f"w{i}").raw == b"$1\r\n1\r\n"
    finally:
        for c in conns:
            c.close()
    print("2 workers:", e.pool_stats(), e.guard_stats())


# -- faults -------------------------------------------------------------------------------------
@root_only
def test_a_nat_silent_drop(lab, module, pooled):
    """A NAT forgets flows idle for 2 s and drops what follows silently. redis_proxy alone: the
    first command after every idle spell hangs until op_timeout and fails ("upstream
    failure"); redis_proxy then closes that leg and the follow-up works on a new one. Through
    the filter: no error, one leg for the whole run."""
    with NatTimeout("drop", cutoff_s=CUTOFF_S) as fault:
        r, snaps = _side_by_side(pooled, fault, module)
    for client in CLIENTS:
        plain, guard = r[("plain", client)], r[("guard", client)]
        assert plain.errors, f"the fault did not bite redis_proxy alone: {plain.summary()}"
        assert all("upstream failure" in s.error for s in plain.errors), plain.summary()
        assert snaps[("plain", client)]["pool"]["upstream_rq_timeout"] >= 1
        _assert_clean(guard, snaps[("guard", client)], f"{client} through the filter")


@root_only
def test_c_redis_timeout(lab, module, pooled):
    """Redis `timeout 2` closes idle connections. redis_proxy hears Redis's FIN while idle,
    drops the leg and opens a new one for the next command, so its clients see no error (the
    fault does not reach the application through redis_proxy; measured, printed), but every
    idle spell costs a leg. Through the filter: no error and the leg is never closed."""
    with RedisTimeout(cutoff_s=CUTOFF_S) as fault:
        r, snaps = _side_by_side(pooled, fault, module)
    for client in CLIENTS:
        plain_pool = snaps[("plain", client)]["pool"]
        # The fault is real: Redis closed the plain legs while they idled.
        assert plain_pool["legs_closed_remote"] >= ROUNDS, (client, plain_pool)
        assert plain_pool["legs_opened"] >= ROUNDS + 1, (client, plain_pool)
        _assert_clean(r[("guard", client)], snaps[("guard", client)],
                      f"{client} through the filter")
        assert snaps[("guard", client)]["pool"]["legs_closed_remote"] == 0


@root_only
def test_app_health_checks_do_not_reach_redis_through_redis_proxy(lab, module, pooled):
    """redis-py's health_check_interval PINGs a pooled connection before using it after an idle
    spell. Through redis_proxy that PING is answered by Envoy: Redis never sees it, the leg
    stays dead, and the SET after it fails. The filter PINGs the leg itself."""
    with NatTimeout("drop", cutoff_s=CUTOFF_S) as fault:
        plain = pooled(fault.address, internal_leg=False, op_timeout=OP_TIMEOUT, name="plain-hc")
        guard = pooled(fault.address, module=module, plugin_config=GUARD, op_timeout=OP_TIMEOUT,
                       name="guard-hc")

        async def session(envoy):
            from lab.clients import make_async_client
            c = make_async_client(envoy.address, protocol=2, single_connection_client=False,
                                  socket_timeout=COMMAND_TIMEOUT_S)
            c.connection_pool.connection_kwargs["health_check_interval"] = 1
            try:
                await c.set("hc", "warmup")
                await asyncio.sleep(IDLE_S)
                try:
                    await c.set("hc", "after-idle")
                    return None
                except Exception as exc:  # noqa: BLE001
                    return f"{type(exc).__name__}: {exc}"
            finally:
                await c.aclose()

        pings_before = _redis_pings(fault)

        async def both():
            return await asyncio.gather(session(plain), session(guard))

        plain_err, guard_err = asyncio.run(both())
        answered = guard.guard_stat("keepalive.answered")
        redis_pings = _redis_pings(fault) - pings_before
        sent = guard.guard_stat("keepalive.sent")
    print(f"plain: {plain_err!r}; guard: {guard_err!r}; Redis answered {redis_pings} PINGs; "
          f"the filter sent {sent}, {answered} answered")
    assert plain_err is not None and "upstream failure" in plain_err, plain_err
    assert guard_err is None, guard_err
    # Every PING Redis answered was the filter's: the two health-check PINGs (one per client)
    # would put Redis's count above what the filter had sent.
    assert answered <= redis_pings <= sent, (answered, redis_pings, sent)


@root_only
def test_dead_leg_closed_by_the_filter_is_replaced_by_redis_proxy(lab, module, pooled):
    """A leg can still die between keepalives (here the keepalive interval is longer than the
    NAT cutoff on purpose): the filter's PING goes unanswered, it closes the idle leg, and
    redis_proxy drops it from its pool and connects afresh for the next command: no error.
    (In the transparent setup this depends on the client noticing the close; here redis_proxy
    is the client, and it does.)"""
    late = {"keepalive_interval": "3s", "ping_timeout": "1s", "probe_after": "0s"}
    with NatTimeout("drop", cutoff_s=CUTOFF_S) as fault:
        guard = pooled(fault.address, module=module, plugin_config=late, op_timeout=OP_TIMEOUT,
                       name="guard-late")
        res = asyncio.run(run_sessions([("py-async-resp2-pool", guard.address, "late")],
                                       rounds=1, idle_s=6.0,
                                       command_timeout_s=COMMAND_TIMEOUT_S))[0]
        pool, stats = guard.pool_stats(), guard.guard_stats()
    print(res.summary(), pool, stats)
    assert res.harness_error is None, res.harness_error
    assert stats["keepalive.failed"] >= 1 and stats["reconnect_signals"] >= 1, stats
    assert pool["legs_closed_remote"] >= 1 and pool["legs_opened"] >= 2, pool
    assert not res.errors and res.spells[0].verified, res.summary()


# -- what redis_proxy accepts (the README's "pooled vs transparent" claims) --------------------
def test_redis_proxy_command_coverage_claims(lab, module, pooled):
    """The claims the README makes about redis_proxy on 1.40, through the pooled chain: RESP2
    only; no pub/sub, blocking commands, WAIT or MONITOR; MULTI/EXEC on a connection of its
    own; SELECT forwarded on the SHARED leg (it switches the database of every client); EVAL
    needs a key. The filter never passes any of it through."""
    redis = lab.redis(extra_config={"databases": "16"})
    e = pooled(redis, module=module, plugin_config=GUARD)
    refused = {}
    with RawConnection(e.address) as a, RawConnection(e.address) as b:
        assert a.command("HELLO", "3").raw.startswith(b"-NOPROTO")
        assert a.command("HELLO", "2").raw.startswith(b"*")
        for cmd in (["SUBSCRIBE", "ch"], ["PSUBSCRIBE", "c*"], ["BLPOP", "l", "1"],
                    ["XREAD", "BLOCK", "10", "STREAMS", "s", "0"], ["WAIT", "0", "0"],
                    ["MONITOR"], ["CLIENT", "REPLY", "OFF"], ["CLIENT", "ID"],
                    ["EVAL", "return 1", "0"]):
            reply = a.command(*cmd).raw
            refused[" ".join(cmd)] = reply
            assert reply.startswith(b"-"), (cmd, reply)
        assert a.command("PUBLISH", "ch", "x").raw == b":0\r\n"
        assert a.command("EVAL", "return 1", "1", "k").raw == b":1\r\n"
        legs = e.pool_stats()["legs_opened"]
        assert a.command("MULTI").raw == b"+OK\r\n"
        assert a.command("SET", "t", "1").raw == b"+QUEUED\r\n"
        assert b.command("SET", "u", "1").raw == b"+OK\r\n"   # b is not inside a's MULTI
        assert a.command("EXEC").raw == b"*1\r\n+OK\r\n"
        assert e.pool_stats()["legs_opened"] == legs + 1      # a leg for the transaction
        # SELECT goes to the shared leg: b's next write lands in database 5.
        assert a.command("SELECT", "5").raw == b"+OK\r\n"
        assert b.command("SET", "leaked", "1").raw == b"+OK\r\n"
        assert a.command("SELECT", "0").raw == b"+OK\r\n"
    direct = redis.direct(db=5)
    try:
        assert direct.get("leaked") == b"1"
    finally:
        direct.close()
    print("refused:", refused)
    stats = e.guard_stats()
    assert stats["passthrough"] == 0 and stats["keepalive.failed"] == 0, stats
