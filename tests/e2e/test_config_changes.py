"""Configuration changes under load: a listener update (LDS from a watched file, replaced by an
atomic rename) that changes the filter's configuration, or its module, while connections are
open; and the same configuration change by ECDS (the filter's config alone, as Istio sends a
WasmPlugin's pluginConfig). Both builds (the native build's changes are xDS updates too).

Measured here:
- open connections: Envoy updates the filter chain in place; the connections on the old chain
  keep working, and the filter keeps their keepalives going, until the drain time
  (--drain-time-s) ends; then Envoy closes them all at once (FIN). New connections get the new
  configuration at once. Plain Envoy (no filter) closes them the same way: the filter adds no
  close. By ECDS nothing drains: open connections keep the old configuration (and the old
  module, after a new one), new ones get the new;
- stats: counters carry on across the change (same names, same Envoy stats), not reset; the
  drain's closes are counted as idle deaths and reconnect signals, and one lone drained
  connection teaches "auto" a cutoff (a strict xfail: it fails once the filter tells them apart);
- the learned idle cutoff ("auto"): kept across a configuration change (both builds) and a new
  .wasm (proxy-wasm shared data outlives a VM); a native module loaded from a new path starts
  over, and its connections get no per-upstream stats (those come from the bootstrap extension
  of the first module).
"""

from __future__ import annotations

import select
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from lab import FilterModule, RawConnection
from lab.xds_files import EcdsEnvoy, LdsEnvoy
from lab.resp import EOFReached

IDLE_CONNECTIONS = 100
BUSY_CONNECTIONS = 4
DRAIN_S = 5.0
BEFORE = {"keepalive_interval": "1s"}
AFTER = {"keepalive_interval": "1s", "ping_timeout": "4s"}
# As tests/lab/learning.py, against a Redis `timeout 2` (it closes idle connections 2-3 s in).
AUTO = {"keepalive_interval": "auto", "min_keepalive_interval": "500ms",
        "max_keepalive_interval": "8s", "ping_timeout": "1s", "probe_after": "0s"}


@dataclass
class Close:
    after_update_s: float
    reset: bool
    stray: bytes = b""


@dataclass
class Busy:
    """A connection sending INCR every 50 ms until it is closed."""
    conn: RawConnection
    answered: int = 0
    close: Optional[Close] = None
    errors: List[str] = field(default_factory=list)


def lds_envoy(lab, upstream, **kwargs) -> LdsEnvoy:
    """An LdsEnvoy the `lab` fixture watches (log tail on failure, no VM failure allowed)."""
    envoy = LdsEnvoy(upstream, **kwargs)
    lab.envoys.append(envoy)
    return envoy


def open_idle(envoy: LdsEnvoy, n: int) -> List[RawConnection]:
    conns = [RawConnection(envoy.address) for _ in range(n)]
    for conn in conns:
        assert conn.command("PING").raw == b"+PONG\r\n"
    return conns


def run_busy(busy: Busy, t_update: List[float], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            busy.conn.send_command("INCR", "busy")
            busy.conn.read_frame(3.0)
            busy.answered += 1
        except (EOFReached, BrokenPipeError, ConnectionResetError) as exc:
            reset = not isinstance(exc, EOFReached) or exc.reset
            busy.close = Close(time.monotonic() - (t_update[0] or time.monotonic()), reset)
            return
        except TimeoutError as exc:
            busy.errors.append(str(exc))
            return
        time.sleep(0.05)


def watch_closes(conns: List[RawConnection], t_update: float, until: float,
                 closes: Optional[Dict[int, Close]] = None) -> Dict[int, Close]:
    """When each connection is closed, relative to the update (select over all sockets); into
    `closes` as they come, so another thread can look while it runs."""
    closes = {} if closes is None else closes
    socks = {c.sock.fileno(): c for c in conns}
    while len(closes) < len(conns) and time.monotonic() < until:
        waiting = [fd for fd in socks if fd not in closes]
        ready, _, _ = select.select(waiting, [], [], 0.2)
        for fd in ready:
            try:
                data = socks[fd].sock.recv(4096)
                reset = False
            except ConnectionResetError:
                data, reset = b"", True
            if data:  # bytes before the close: nothing should ever come unasked
                closes[fd] = Close(time.monotonic() - t_update, reset, data)
            else:
                closes[fd] = Close(time.monotonic() - t_update, reset)
    return closes


def configured_lines(envoy: LdsEnvoy) -> List[str]:
    return [ln for ln in envoy.log_text().splitlines() if "redis-idle-guard: configured" in ln]


def test_a_config_change_drains_the_open_connections(lab, module):
    redis = lab.redis()
    envoy = lds_envoy(lab, redis, module=module, plugin_config=BEFORE, drain_time_s=DRAIN_S,
                      name="envoy-lds")
    with envoy:
        idle = open_idle(envoy, IDLE_CONNECTIONS)
        t_update: List[float] = [0.0]
        stop = threading.Event()
        busy = [Busy(RawConnection(envoy.address)) for _ in range(BUSY_CONNECTIONS)]
        threads = [threading.Thread(target=run_busy, args=(b, t_update, stop), daemon=True)
                   for b in busy]
        for t in threads:
            t.start()
        time.sleep(2.0)  # keepalives every second on the idle ones
        before = envoy.guard_stats()
        up_before = envoy.upstream_stats()

        t_update[0] = time.monotonic()
        envoy.update(plugin_config=AFTER)
        fresh = RawConnection(envoy.address)
        assert fresh.command("PING").raw == b"+PONG\r\n"
        watcher: Dict[int, Close] = {}
        watch = threading.Thread(target=watch_closes, daemon=True,
                                 args=(idle, t_update[0], t_update[0] + DRAIN_S + 10, watcher))
        watch.start()
        time.sleep(DRAIN_S - 1.0)
        during = envoy.guard_stats()
        lds = envoy.lds_stats()
        early = dict(watcher)
        watch.join(DRAIN_S + 12)
        for t in threads:
            t.join(5)  # each ends at its next command after the close
        stop.set()
        time.sleep(0.5)
        after = envoy.guard_stats()
        up_after = envoy.upstream_stats()
        assert fresh.command("PING").raw == b"+PONG\r\n", "the new connection outlives the drain"
        executed = int(redis.direct().get("busy") or 0)

    closes = sorted(c.after_update_s for c in watcher.values())
    print(f"idle: {len(watcher)}/{IDLE_CONNECTIONS} closed, {closes[0]:.2f}..{closes[-1]:.2f} s "
          f"after the update (drain time {DRAIN_S:g} s)")
    print("busy:", [(b.answered, b.close) for b in busy], "INCRs Redis ran:", executed)
    print("keepalive.sent at the update", before["keepalive.sent"], "- 1 s before the drain end",
          during["keepalive.sent"], "- after", after["keepalive.sent"])
    print("stats before", before, "\nafter", after, "\nper upstream before", up_before,
          "\nafter", up_after)

    # Envoy replaced the filter chain in place and drained the old one.
    assert lds["listener_in_place_updated"] == 1 and lds["total_filter_chains_draining"] == 1, lds
    assert any("ping_timeout=4s" in ln for ln in configured_lines(envoy)), "the new config"
    # Until the drain time the old connections live, and keep their keepalives.
    assert not early, f"closed before the drain time: {early}"
    assert during["keepalive.sent"] - before["keepalive.sent"] >= IDLE_CONNECTIONS, (before, during)
    # Then every one is closed, at once, with a FIN and no stray byte.
    assert len(watcher) == IDLE_CONNECTIONS, f"{len(watcher)} closed"
    assert DRAIN_S - 1.0 <= closes[0] and closes[-1] <= DRAIN_S + 5.0, closes
    assert closes[-1] - closes[0] < 2.0, "all at once"
    assert not any(c.reset or c.stray for c in watcher.values()), watcher
    # The busy ones too: answered until the drain ends, then closed.
    for b in busy:
        assert not b.errors and b.answered > 0 and b.close is not None, b
        assert DRAIN_S - 1.0 <= b.close.after_update_s <= DRAIN_S + 5.0, b
    # Counters carry on across the change; the gauge counts the new chain's connection only.
    for name in ("keepalive.sent", "keepalive.answered"):
        assert after[name] >= during[name] >= before[name], name
    assert up_after["connections_opened"] == IDLE_CONNECTIONS + BUSY_CONNECTIONS + 1, up_after
    assert after["connections"] == 1, after


def test_without_the_filter_a_listener_change_closes_them_the_same(lab):
    """Plain Envoy (tcp_proxy only), the same kind of change (its idle_timeout): the old
    connections live until the drain time, then are closed. The closes are Envoy's."""
    redis = lab.redis()
    envoy = lds_envoy(lab, redis, drain_time_s=DRAIN_S, idle_timeout=3600, name="envoy-lds-plain")
    with envoy:
        idle = open_idle(envoy, 20)
        t_update = time.monotonic()
        envoy.update(idle_timeout=3000)
        closes = watch_closes(idle, t_update, t_update + DRAIN_S + 10)
        assert envoy.lds_stats()["listener_in_place_updated"] == 1
    times = sorted(c.after_update_s for c in closes.values())
    print(f"plain: {len(closes)}/20 closed {times[0]:.2f}..{times[-1]:.2f} s after the update")
    assert len(closes) == 20
    assert DRAIN_S - 1.0 <= times[0] and times[-1] <= DRAIN_S + 5.0, times
    assert not any(c.reset or c.stray for c in closes.values())


def test_an_ecds_change_leaves_the_open_connections_alone(lab, module, tmp_path):
    """The filter's configuration by ECDS (Istio's path for a WasmPlugin's pluginConfig): no
    listener change, no drain. The open connections stay open past the drain time and keep the
    old configuration (keepalives every second, not every 2 s); new ones get the new one. A new
    module by ECDS (a WasmPlugin's new url) drains nothing either."""
    redis = lab.redis()
    envoy = EcdsEnvoy(redis, module=module, plugin_config=BEFORE, name="envoy-ecds",
                      extra_args=["--drain-time-s", "2"])
    lab.envoys.append(envoy)
    with envoy:
        idle = open_idle(envoy, 20)
        envoy.update(plugin_config={"keepalive_interval": "2s", "ping_timeout": "4s"})
        t_update = time.monotonic()
        before = envoy.guard_stats()["keepalive.sent"]
        fresh = open_idle(envoy, 1)[0]
        closes = watch_closes(idle, t_update, t_update + 5.0)  # 2.5 times the drain time
        sent = envoy.guard_stats()["keepalive.sent"] - before
        lds = {k: v for k, v in envoy.stats(r"^listener_manager\.listener_").items()}
        for conn in idle[:3] + [fresh]:
            assert conn.command("PING").raw == b"+PONG\r\n"

        vms = sum(envoy.stats(r"runtime\.v8\.created").values())
        envoy.update(module=upgraded(module, tmp_path))
        t_upgrade = time.monotonic()
        newest = open_idle(envoy, 1)[0]
        closes_after_upgrade = watch_closes(idle + [fresh], t_upgrade, t_upgrade + 3.0)
        created = sum(envoy.stats(r"runtime\.v8\.created").values())
        for conn in idle[:3] + [fresh, newest]:
            assert conn.command("PING").raw == b"+PONG\r\n"
    print(f"ECDS: {len(closes)}/20 closed in 5 s; {sent} keepalives in 5 s; {lds}; "
          f"new module: {len(closes_after_upgrade)}/21 closed in 3 s, VMs created {vms} -> "
          f"{created}")
    assert closes_after_upgrade == {}, closes_after_upgrade
    if not module.native:
        assert created > vms, "the new .wasm runs in a new VM"
    assert closes == {}, closes
    assert not any(v for k, v in lds.items() if k.endswith(("in_place_updated", "modified"))), lds
    assert any("keepalive_interval=2s" in ln for ln in configured_lines(envoy))
    # 20 connections at 1 s send about 90 in 5 s; at the new 2 s about 40.
    assert sent >= 60, sent


# -- the learned cutoff ---------------------------------------------------------------------

def teach(envoy: LdsEnvoy, limit_s: float = 40.0) -> List[float]:
    """Pooled connections idle through Redis `timeout 2` until the filter keeps them alive
    below it; the idle spells that ended in a close."""
    deaths: List[float] = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with RawConnection(envoy.address) as conn:
            assert conn.command("SET", "k", "v").raw == b"+OK\r\n"
            try:
                deaths.append(conn.wait_eof(10.0)[0])
            except TimeoutError:
                return deaths  # kept alive past Redis's timeout: learned
    raise AssertionError(f"nothing learned in {limit_s}s: deaths {deaths}")


def idle_outlives_redis_timeout(envoy: LdsEnvoy, idle_s: float = 4.0) -> bool:
    """A new connection idles idle_s (> Redis `timeout 2`), then answers a GET."""
    with RawConnection(envoy.address) as conn:
        assert conn.command("SET", "k", "v").raw == b"+OK\r\n"
        try:
            conn.wait_eof(idle_s)
            return False
        except TimeoutError:
            return conn.command("GET", "k").raw == b"$1\r\nv\r\n"


def upgraded(module: FilterModule, directory: Path) -> FilterModule:
    """The same build as a new module: a .wasm with one more custom section (a new sha256, so a
    new VM), or the .so copied to a new path (Envoy loads it as another module)."""
    if module.native:
        target = directory / "libredis_idle_guard-v2.so"
        shutil.copy(module.path, target)
        return FilterModule(target)
    name, payload = b"upgrade", b"v2"
    body = bytes([len(name)]) + name + payload
    target = directory / "redis_idle_guard-v2.wasm"
    target.write_bytes(module.path.read_bytes() + b"\x00" + bytes([len(body)]) + body)
    return FilterModule(target)


def test_the_learned_cutoff_across_a_config_change_and_a_new_module(lab, module, tmp_path):
    redis = lab.redis(timeout=2)
    envoy = lds_envoy(lab, redis, module=module, plugin_config=AUTO, drain_time_s=2,
                      name="envoy-lds-learn")
    with envoy:
        deaths = teach(envoy)
        learned = envoy.upstream_stats()
        print("deaths while learning", [f"{d:.1f}" for d in deaths], "learned", learned)
        assert deaths and 0 < learned["idle_cutoff_ms"] < 3500, learned
        assert learned["keepalive_interval_ms"] < learned["idle_cutoff_ms"], learned

        # A configuration change: the new chain starts on what was learned.
        envoy.update(plugin_config={**AUTO, "ping_timeout": "900ms"})
        assert idle_outlives_redis_timeout(envoy), "the learned cutoff was lost"
        kept = envoy.upstream_stats()
        print("after the config change", kept)
        assert kept["idle_deaths"] == learned["idle_deaths"], kept
        assert kept["idle_cutoff_ms"] == learned["idle_cutoff_ms"], kept
        assert kept["connections_opened"] == learned["connections_opened"] + 1, kept

        # A new module.
        time.sleep(2.5)  # the previous chain has drained
        signals = envoy.guard_stats()["reconnect_signals"]
        vms = envoy.stats(r"wasm\.envoy\.wasm\.runtime\.v8\.created")
        memory = envoy.guard_stats()["vm_memory_bytes"]
        envoy.update(module=upgraded(module, tmp_path))
        survived = idle_outlives_redis_timeout(envoy)
        after = envoy.upstream_stats()
        print("after the new module", "survived" if survived else "died", after)
        if not module.native:
            # A new VM (a new sha256), the same proxy-wasm shared data: nothing is lost.
            created = envoy.stats(r"wasm\.envoy\.wasm\.runtime\.v8\.created")
            assert sum(created.values()) > sum(vms.values()), (vms, created)
            time.sleep(2.5)  # the old VM's chain has drained
            live = envoy.stats(r"wasm_vm_count|runtime\.v8\.active")
            print(f"VMs created {vms} -> {created}; vm_memory_bytes {memory} -> "
                  f"{envoy.guard_stats()['vm_memory_bytes']} once the old VM's chain drained; "
                  f"{live}")
            assert survived, "the learned cutoff was lost with the old VM"
            assert after["idle_deaths"] == kept["idle_deaths"], after
            assert after["connections_opened"] == kept["connections_opened"] + 1, after
        else:
            # Another module: its own store (nothing learned) and no bootstrap extension, so
            # its connections count in the global stats only.
            assert not survived, "a native module from a new path kept the learned cutoff"
            assert after == kept, "per-upstream stats moved for the new module's connections"
            assert envoy.guard_stats()["reconnect_signals"] == signals + 1


@pytest.mark.xfail(strict=True, reason="measured 2026-12-01: the filter takes Envoy's drain close "
                   "of an idle connection for an idle death, and learns from it")
def test_a_drain_close_is_not_an_idle_death(lab, module):
    """One idle connection on a chain that drains: Envoy closes it at the drain time. That is
    not the path killing an idle connection, so nothing should count or be learned; measured:
    idle_deaths and reconnect_signals count it, and "auto" learns a cutoff of about the
    connection's silence (e.g. 1 s when it had a keepalive answered 1 s before)."""
    redis = lab.redis()
    envoy = lds_envoy(lab, redis, module=module, plugin_config=AUTO, drain_time_s=2,
                      name="envoy-lds-drain")
    with envoy:
        conn = open_idle(envoy, 1)[0]
        envoy.update(plugin_config={**AUTO, "ping_timeout": "900ms"})
        conn.wait_eof(10)
        time.sleep(1.5)  # a lone death is judged after its burst window
        up = envoy.upstream_stats()
    print("after the drain:", up)
    assert up["idle_deaths"] == 0 and up["reconnect_signals"] == 0, up
    assert up["idle_cutoff_ms"] == 0, up
