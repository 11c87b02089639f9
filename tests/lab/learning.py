#!/usr/bin/env python3
"""keepalive_interval "auto" under a NAT cutoff the filter is never told: the learning run of
`make demo` and of tests/e2e/test_learning.py.

    .venv/bin/python tests/lab/learning.py --module target/wasm32-unknown-unknown/release/redis_idle_guard.wasm

Builds the fault lab's NAT (a router namespace whose conntrack forgets flows idle for 3 s and
drops what comes after), starts Envoy with the filter (two workers) and plain Envoy, then:
1. one pooled connection idles through the filter; each time the filter closes it (its PING
   went unanswered: the reconnect signal) the pool reopens it; the deaths are printed;
2. six more connections, over both workers, idle as long: none should die;
3. four connections through each Envoy idle 5 s, then GET: through the filter they answer,
   through plain Envoy they hang.
Needs root (network namespaces). Stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == _HERE:
    sys.path.pop(0)  # run as a script: import the lab as a package
sys.path.insert(0, str(_HERE.parent))

from lab.envoy_proxy import EnvoyProxy  # noqa: E402
from lab.faults import NatTimeout  # noqa: E402
from lab.procs import install_sigterm_handler  # noqa: E402

CUTOFF_S = 3
AUTO = {"keepalive_interval": "auto", "min_keepalive_interval": "500ms",
        "max_keepalive_interval": "8s", "ping_timeout": "1s", "probe_after": "0s"}
LEARN_S = 20.0
SLOTS_AFTER = 6
AFTER_S = 12.0
REUSE_IDLE_S = CUTOFF_S + 2.0
SET = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
GET = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"


@dataclass
class LearningRun:
    cutoff_s: float
    config: Dict[str, str]
    # Connections each Envoy worker accepted (Envoy's per-worker listener stats).
    per_worker: Dict[str, int] = field(default_factory=dict)
    deaths: List[float] = field(default_factory=list)
    unexpected: List[bytes] = field(default_factory=list)
    learned: Dict[str, float] = field(default_factory=dict)
    later_deaths: List[float] = field(default_factory=list)
    adopted_log: List[str] = field(default_factory=list)
    # The Envoy threads (workers) that learned a cutoff from deaths they saw themselves.
    learned_on: Set[str] = field(default_factory=set)
    guarded_reuse: List[Optional[str]] = field(default_factory=list)
    plain_reuse: List[Optional[str]] = field(default_factory=list)
    prometheus: List[str] = field(default_factory=list)


async def _idle_slot(address, t0, stop_at, deaths, unexpected, say):
    """A pooled connection that is used once and then idles; when it is closed (the filter's
    reconnect signal) the pool opens a new one."""
    while time.monotonic() < stop_at:
        reader, writer = await asyncio.open_connection(*address)
        try:
            writer.write(SET)
            await writer.drain()
            reply = await asyncio.wait_for(reader.readexactly(5), 3)
            if reply != b"+OK\r\n":
                unexpected.append(reply)
                return
            try:
                data = await asyncio.wait_for(reader.read(1), stop_at - time.monotonic())
            except asyncio.TimeoutError:
                return
            if data:
                unexpected.append(data)
                return
            t = round(time.monotonic() - t0, 1)
            deaths.append(t)
            say(f"    {t:5.1f} s: the filter closed an idle connection (dead link); the pool reopens it")
        finally:
            writer.close()


async def _use_after_idle(address, idle_s, timeout_s):
    """Connect, SET, idle longer than the cutoff, GET: the error, or None."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(SET)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(5), 3) == b"+OK\r\n"
        await asyncio.sleep(idle_s)
        writer.write(GET)
        await writer.drain()
        reply = await asyncio.wait_for(reader.readexactly(7), timeout_s)
        return None if reply == b"$1\r\nv\r\n" else f"unexpected reply {reply!r}"
    except asyncio.TimeoutError:
        return "timeout (no reply)"
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()


def run(guard: EnvoyProxy, plain: EnvoyProxy,
        say: Callable[[str], None] = lambda _m: None,
        cutoff_s: float = CUTOFF_S) -> LearningRun:
    """The three phases (see the module doc) against two running Envoys behind a fault whose
    idle cutoff is `cutoff_s` (NatTimeout or RedisTimeout)."""
    result = LearningRun(cutoff_s=cutoff_s, config=dict(AUTO))
    reuse_idle_s = cutoff_s + 2.0

    async def idle_pool(slots, seconds, deaths):
        t0 = time.monotonic()
        await asyncio.gather(*(_idle_slot(guard.address, t0, t0 + seconds, deaths,
                                          result.unexpected, say) for _ in range(slots)))
        deaths.sort()

    say(f"  1. one pooled connection idles {LEARN_S:.0f} s through the filter")
    asyncio.run(idle_pool(1, LEARN_S, result.deaths))
    result.learned = guard.upstream_stats("redis")
    say(f"     learned: idle cutoff ≤ {result.learned.get('idle_cutoff_ms')} ms, keepalive every "
        f"{result.learned.get('keepalive_interval_ms')} ms")

    say(f"  2. {SLOTS_AFTER} more connections (over both Envoy workers) idle {AFTER_S:.0f} s")
    asyncio.run(idle_pool(SLOTS_AFTER, AFTER_S, result.later_deaths))
    say(f"     deaths: {len(result.later_deaths)}")
    log_lines = guard.log_text().splitlines()
    result.adopted_log = [ln.split("redis-idle-guard: ", 1)[-1]
                          for ln in log_lines if "another worker learned" in ln]
    # Envoy's log line carries its thread in the second bracket: "[time][thread][level]…".
    result.learned_on = {ln.split("][", 2)[1] for ln in log_lines
                         if "connections died after" in ln and "][" in ln}

    say(f"  3. 4 connections through each Envoy: SET, idle {reuse_idle_s:g} s, GET")

    async def reuse(envoy):
        return await asyncio.gather(*(_use_after_idle(envoy.address, reuse_idle_s, 2.5)
                                      for _ in range(4)))

    async def both():
        return await asyncio.gather(reuse(guard), reuse(plain))

    result.guarded_reuse, result.plain_reuse = asyncio.run(both())
    result.per_worker = {k.split(".")[-2]: v for k, v in
                         guard.stats(r"worker_\d+\.downstream_cx_total").items()}
    result.prometheus = [ln for ln in guard.prometheus_text().splitlines()
                         if ln.startswith("redis_idle_guard_upstream_") and "_bucket" not in ln]
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", required=True, type=Path,
                    help="the built filter: the .wasm or the native .so")
    args = ap.parse_args()
    if not args.module.exists():
        print(f"error: {args.module} does not exist; run `make build` (or `make build-native`)"
              " first", file=sys.stderr)
        return 2
    install_sigterm_handler()

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    say(f"learning an idle cutoff: a NAT that forgets flows idle {CUTOFF_S} s and drops what "
        f"follows; the filter is told only {AUTO}")
    with NatTimeout("drop", cutoff_s=CUTOFF_S) as fault:
        with EnvoyProxy(fault.address, module=args.module, plugin_config=AUTO, concurrency=2,
                        name="learning-envoy-guard") as guard, \
                EnvoyProxy(fault.address, name="learning-envoy-plain") as plain:
            r = run(guard, plain, say)
    ok_guard = sum(e is None for e in r.guarded_reuse)
    ok_plain = sum(e is None for e in r.plain_reuse)
    print()
    print(f"lab cutoff {r.cutoff_s} s (never told) → learned ≤ {r.learned.get('idle_cutoff_ms')} ms, "
          f"keepalive every {r.learned.get('keepalive_interval_ms')} ms")
    print(f"deaths while learning: {len(r.deaths)} at {r.deaths} s; after: {len(r.later_deaths)}")
    print(f"GET after {REUSE_IDLE_S:g} s idle: with the filter {ok_guard}/4 ok, plain Envoy "
          f"{ok_plain}/4 ok ({', '.join(sorted({e for e in r.plain_reuse if e}))})")
    for line in r.prometheus:
        print(f"  {line}")
    print()
    good = (r.deaths and not r.later_deaths and ok_guard == 4 and not r.unexpected)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
