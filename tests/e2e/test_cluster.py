"""Redis Cluster through Envoy: three masters (no replicas), each behind its own Envoy listener
and announced at it (tests/lab/cluster.py), so CLUSTER SLOTS, MOVED and ASK keep clients on
Envoy. Clients: redis-py's asyncio RedisCluster (RESP2) and ioredis's Cluster (RESP3), every
retry off, redirections followed. A plain cluster (tcp_proxy only) and a guarded one (the
filter at keepalive 1s / ping_timeout 2s) run side by side, each client on its own keys.

- Idle spells behind a fault (faults.py; needs root): a NAT that silently drops flows idle for
  2 s, and Redis `timeout 2`. Two rounds of "idle 4 s, SET/GET one key per master". Without
  the filter the first command after the idle spell fails, and every round has errors, for
  both clients; with it every command succeeds, on all three masters. A third client, ioredis
  with its default cluster reconnect, is also run: the silent drop bites it, Redis's close
  does not (it reconnects once all its node connections have closed).
- A slot migration while the clients run commands back to back (SETSLOT IMPORTING/MIGRATING,
  MIGRATE, SETSLOT NODE: the clients get ASK, then MOVED): every command succeeds and every GET
  reads back its SET, through the filter as through plain Envoy, and the filter never steps
  aside (passthrough 0).

Wall time (2026-12-01, 2 cores): about 100 s for both builds, most of it the plain chain's
2 s client timeouts under the silent drop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Dict, List, Tuple

import pytest
from redis.crc import key_slot

from lab import RawConnection
from lab.cluster import (CLIENTS, RECONNECTING, ClientRun, Cluster, admin, busy_loop,
                         idle_rounds, parse_shards, parse_slots)
from lab.faults import NatTimeout, RedisTimeout

GUARD = {"keepalive_interval": "1s", "ping_timeout": "2s"}
ROUNDS = 2
IDLE_S = 4.0
CUTOFF_S = 2
TIMEOUT_S = 2.0  # the clients' command timeout

needs_root = pytest.mark.needs_root


@pytest.fixture
def clusters(lab):
    """make(name, fault=None, module=None): a launched Cluster (wait_ready() still to call),
    its Envoys in `lab` (log tails on failure, VM failures checked), stopped after the test."""
    made: List[Cluster] = []

    def make(name: str, fault=None, module=None) -> Cluster:
        c = Cluster(name=name, fault=fault, envoy=lab.envoy, module=module,
                    plugin_config=GUARD if module is not None else None)
        made.append(c)
        c.launch()
        lab.redises.extend(m.redis for m in c.masters)
        return c

    yield make
    for c in made:
        c.stop()


def _pair(clusters, module, fault=None) -> Tuple[Cluster, Cluster]:
    plain, guard = clusters("plain", fault), clusters("guard", fault, module)
    plain.wait_ready()
    guard.wait_ready()
    return plain, guard


def _print_runs(runs: List[ClientRun]) -> None:
    for r in runs:
        print(r.summary())


def _assert_guard_clean(guard: Cluster, runs: List[ClientRun]) -> Dict[str, int]:
    for r in runs:
        assert r.harness_error is None, r.summary()
        assert not r.errors(), f"{r.client} through the filter: {r.summary()}"
    stats = guard.guard_stats()
    print("filter stats (3 Envoys):", {k: v for k, v in stats.items() if "upstream" not in k})
    for name in ("passthrough", "keepalive.failed", "reconnect_signals", "probe.failed"):
        assert stats.get(name, 0) == 0, (name, stats)
    return stats


# -- idle spells behind a fault ----------------------------------------------------------
def _idle_spells(clusters, module, fault) -> Tuple[List[ClientRun], List[ClientRun], Cluster]:
    print(f"\n[{'native' if module.native else 'wasm'}] {fault.title}")
    with fault:
        plain, guard = _pair(clusters, module, fault)
        keys = {c: guard.spread_keys(f"{c}:idle", per_master=1)
                for c in (*CLIENTS, RECONNECTING)}

        async def both():
            return await asyncio.gather(*(
                idle_rounds(c.startup_node, keys, label=c.name, rounds=ROUNDS, idle_s=IDLE_S,
                            timeout_s=TIMEOUT_S) for c in (plain, guard)))

        plain_runs, guard_runs = asyncio.run(both())
        _print_runs(plain_runs + guard_runs)
        # One key per client on every master: the commands reached all three.
        assert [admin(m, "DBSIZE") for m in guard.masters] == [len(keys)] * 3
        stats = _assert_guard_clean(guard, guard_runs)
    for r in guard_runs:
        assert len(r.ops) == (ROUNDS + 1) * 3 * 2, r.summary()  # SET + GET, 3 keys, 3 rounds
    assert stats["keepalive.sent"] >= 3 * ROUNDS * len(CLIENTS), stats  # ≥1 per idle spell
    return plain_runs, guard_runs, guard


def _assert_bites(plain_runs: List[ClientRun], texts: Tuple[str, ...],
                  clients: Tuple[str, ...]) -> None:
    """Without the filter, the first command after the first idle spell failed, and every
    round after an idle spell had errors. (redis-py reconnects to the whole cluster after an
    error, so in later rounds a master it reached on a fresh connection may answer.)"""
    for r in plain_runs:
        if r.client not in clients:
            continue
        assert r.harness_error is None, r.summary()
        first = r.first_after_idle()[0]
        assert not first.ok, f"{r.client}: the fault did not bite through plain Envoy: {first}"
        for rnd in range(1, ROUNDS + 1):
            errors = r.errors(rnd)
            assert errors, f"{r.client}: no error in round {rnd} through plain Envoy"
            assert all(any(t in e.error.lower() for t in texts) for e in errors), errors


@needs_root
def test_nat_silent_drop(lab, module, clusters):
    plain_runs, _, _ = _idle_spells(clusters, module, NatTimeout("drop", CUTOFF_S))
    _assert_bites(plain_runs, ("timeout", "timed out"), (*CLIENTS, RECONNECTING))


@needs_root
def test_redis_timeout(lab, module, clusters):
    """ioredis with its default cluster reconnect does not see this close (it reconnects when
    all its node connections have closed): its plain result is printed, not asserted."""
    plain_runs, _, _ = _idle_spells(clusters, module, RedisTimeout(CUTOFF_S))
    _assert_bites(plain_runs, ("closed",), CLIENTS)


# -- a slot migration under load -----------------------------------------------------------
MIG_SLOT = key_slot(b"{mig}")
MIG_KEYS = {c: [f"{{mig}}:{c}:{i}" for i in range(5)] for c in CLIENTS}
# Seconds after the clients start: IMPORTING/MIGRATING + half the keys; the rest; SETSLOT NODE;
# the clients stop.
T_BEGIN, T_REST, T_END, T_STOP = 1.5, 2.5, 3.5, 5.0


def _migrate(c: Cluster, start: float) -> Dict[str, float]:
    """The migration of MIG_SLOT to the next master, on the timeline above; when each step
    began (epoch seconds)."""
    src = c.master_for_slot(MIG_SLOT)
    dst = c.masters[(src.index + 1) % len(c.masters)]
    at: Dict[str, float] = {}

    def wait(t: float, name: str) -> None:
        time.sleep(max(0.0, start + t - time.time()))
        at[name] = time.time()

    wait(T_BEGIN, "begin")
    c.begin_migration(MIG_SLOT, src, dst)
    c.migrate_keys(MIG_SLOT, src, dst, 5)  # half of them: the clients see ASK for those only
    wait(T_REST, "rest")
    while c.migrate_keys(MIG_SLOT, src, dst, 100):
        pass
    wait(T_END, "end")
    c.end_migration(MIG_SLOT, src, dst)
    at["ended"] = time.time()
    return at


def _assert_announces_envoys(c: Cluster) -> None:
    """Asked through an Envoy, the cluster names only Envoy addresses."""
    with RawConnection(c.masters[1].announced) as conn:
        slots = parse_slots(conn.command("CLUSTER", "SLOTS").py())
        shards = parse_shards(conn.command("CLUSTER", "SHARDS").py())
    assert {addr for _, _, addr in slots} == c.envoy_addresses, slots
    assert set(shards) == c.envoy_addresses, shards


def test_slot_migration(lab, module, clusters):
    print(f"\n[{'native' if module.native else 'wasm'}] slot {MIG_SLOT} migrates under load")
    plain, guard = _pair(clusters, module)
    for c in (plain, guard):
        _assert_announces_envoys(c)
    start = time.time() + 0.5

    async def run():
        loop = asyncio.get_running_loop()
        steps = [loop.run_in_executor(None, _migrate, c, start) for c in (plain, guard)]
        clients = [busy_loop(c.startup_node, MIG_KEYS, label=c.name, until=start + T_STOP,
                             pause_s=0.01, timeout_s=TIMEOUT_S) for c in (plain, guard)]
        return await asyncio.gather(asyncio.gather(*steps), asyncio.gather(*clients))

    (plain_at, guard_at), (plain_runs, guard_runs) = asyncio.run(run())
    _print_runs(plain_runs + guard_runs)
    for c, at, runs in ((plain, plain_at, plain_runs), (guard, guard_at, guard_runs)):
        redirects = c.redirects()
        print(f"{c.name}: steps at {({k: round(v - start, 2) for k, v in at.items()})}, "
              f"redirects {redirects}")
        for r in runs:
            assert r.harness_error is None, r.summary()
            assert not r.errors(), f"{c.name}/{r.client}: {r.summary()}"
            # Busy in every phase: before, while half and all keys had moved (ASK), and after
            # the slot had (MOVED, then the new master).
            for lo, hi in ((start, at["begin"]), (at["begin"] + 0.1, at["rest"]),
                           (at["rest"] + 0.1, at["end"]), (at["ended"] + 0.1, start + T_STOP)):
                assert sum(1 for o in r.ops if lo <= o.at < hi) >= 5, (c.name, r.client, lo, hi)
        # Every key ended on the new master with the value its client wrote last.
        src = c.master_for_slot(MIG_SLOT)
        dst = c.masters[(src.index + 1) % len(c.masters)]
        assert admin(src, "CLUSTER", "COUNTKEYSINSLOT", MIG_SLOT) == 0
        for r in runs:
            for key, value in r.last.items():
                assert admin(dst, "GET", key) == value, (c.name, key)
        # Each client was sent ASK (and ASKING) while the slot migrated and MOVED after.
        assert redirects["ASK"] >= len(CLIENTS) and redirects["ASKING"] >= len(CLIENTS), redirects
        assert redirects["MOVED"] >= len(CLIENTS), redirects
    _assert_guard_clean(guard, guard_runs)
