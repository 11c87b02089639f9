#!/usr/bin/env python3
"""redis-idle-guard at scale: many idle connections through one Envoy worker, kept alive.

    .venv/bin/python tests/bench/scale.py [--connections 10000] [--hold 30] [--keepalive 1s]
                                          [--builds wasm,native]

For each configuration (bare tcp_proxy, then tcp_proxy behind each build of the filter with the
given keepalive_interval; --rounds repeats them), with one Envoy worker (`--concurrency 1`):
open the connections (plain sockets, in batches), send one `GET` on each and read its reply (a
connection that never sent a byte cannot be pinged), let them idle, and measure over --hold
seconds: Envoy's CPU (% of one core, utime+stime from /proc/<pid>/stat), Redis's CPU, the PINGs
the filter sent per second (`redis_idle_guard.keepalive.sent` at /stats), Envoy's RSS and
tcmalloc-allocated memory per connection (after − before opening them), the module's linear
memory (`redis_idle_guard.vm_memory_bytes`: the Wasm VMs' linear memory, the native module's
heap), and for the native build the CPU of its timer thread alone (/proc/<pid>/task). At the end
every client socket is checked: no stray byte (a PONG that leaked) and no close.

RLIMIT_NOFILE is raised in this process (root) and inherited by Envoy and Redis; Redis runs with
`maxclients 20000`. Results go to stdout and to .lab/bench/scale-<date>.{md,csv}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import common  # noqa: F401  (sets sys.path for the lab)
from common import (BENCH_DIR, REPO_ROOT, cpu_seconds, fmt, loadavg, machine_facts, md_table,
                    rss_bytes, say, text_table)
from lab import EnvoyProxy, LabError, RedisServer, default_native_path, default_wasm_path
from lab.procs import install_sigterm_handler, stop_all

GET = b"*2\r\n$3\r\nGET\r\n$13\r\nbench:scale:k\r\n"
NIL = b"$-1\r\n"
NOFILE = 200_000
# File descriptors Envoy uses besides the proxied connections (listeners, admin, epoll, event
# fds, logs, …): 23 measured with Envoy 1.40; with a margin.
ENVOY_OTHER_FDS = 100
# Envoy's default circuit breaker allows 1,024 connections to a cluster; tcp_proxy closes the
# client connection beyond that (upstream_cx_overflow).
CLUSTER = {"circuit_breakers": {"thresholds": [{"max_connections": 1_000_000,
                                                "max_pending_requests": 1_000_000}]}}


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_connections(port: int, n: int, batch: int = 250, timeout: float = 30.0) -> List[socket.socket]:
    """n connections, each having sent one GET and read its reply ($-1)."""
    socks: List[socket.socket] = []
    try:
        while len(socks) < n:
            group = []
            for _ in range(min(batch, n - len(socks))):
                s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                s.sendall(GET)
                group.append(s)
            for s in group:
                buf = b""
                while len(buf) < len(NIL):
                    chunk = s.recv(len(NIL) - len(buf))
                    if not chunk:
                        raise LabError(f"connection {len(socks)} closed before its reply")
                    buf += chunk
                if buf != NIL:
                    raise LabError(f"unexpected reply {buf!r}")
                s.setblocking(False)
                socks.append(s)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def check_sockets(socks: List[socket.socket]) -> Dict[str, int]:
    """Non-blocking read on every socket: nothing should be there (no leaked PONG, no close)."""
    out = {"quiet": 0, "stray_bytes": 0, "stray_sockets": 0, "closed": 0}
    for s in socks:
        try:
            data = s.recv(65536)
        except BlockingIOError:
            out["quiet"] += 1
            continue
        except OSError:
            out["closed"] += 1
            continue
        if not data:
            out["closed"] += 1
        else:
            out["stray_sockets"] += 1
            out["stray_bytes"] += len(data)
    return out


def envoy_memory(envoy: EnvoyProxy) -> Dict[str, Optional[int]]:
    stats = envoy.stats(r"^server\.memory_")
    return {"rss": rss_bytes(envoy.process.pid),
            "allocated": stats.get("server.memory_allocated"),
            "heap": stats.get("server.memory_heap_size")}


TIMER_THREAD = "redis-idle-guar"  # the native build's timer thread (comm is cut at 15 bytes)


def thread_cpu_seconds(pid: int, comm: str) -> Optional[float]:
    """utime + stime of the threads of `pid` named `comm`; None if there is none."""
    total, found = 0.0, False
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != comm:
                    continue
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found = True
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total if found else None


@dataclass
class Phase:
    round: int
    config: str
    connections: int
    connect_s: float
    hold_s: float
    envoy_cpu_pct: float
    redis_cpu_pct: float
    pings: Optional[int]
    pings_per_s: Optional[float]
    answered: Optional[int]
    rss_before: int
    rss_after: int
    alloc_before: Optional[int]
    alloc_after: Optional[int]
    vm_memory_bytes: Optional[int]
    guard_connections: Optional[int]
    sockets: Dict[str, int]
    other_stats: Dict[str, int]
    envoy_fds: int
    timer_cpu_pct: Optional[float] = None

    @property
    def rss_per_conn(self) -> float:
        return (self.rss_after - self.rss_before) / self.connections

    @property
    def alloc_per_conn(self) -> Optional[float]:
        if self.alloc_before is None or self.alloc_after is None:
            return None
        return (self.alloc_after - self.alloc_before) / self.connections


def run_phase(rnd: int, config: str, redis: RedisServer, module: Optional[Path], n: int,
              hold: float, plugin_config: Dict[str, str]) -> Phase:
    if module is None:
        envoy = EnvoyProxy(redis.address, name="envoy-scale-bare", cluster_options=CLUSTER)
    else:
        envoy = EnvoyProxy(redis.address, module=module, plugin_config=plugin_config,
                           name=f"envoy-scale-{config}", cluster_options=CLUSTER)
    with envoy:
        time.sleep(1.0)
        before = envoy_memory(envoy)
        say(f"  {config}: opening {n:,} connections (Envoy RSS {before['rss'] / 2**20:.1f} MiB)")
        t0 = time.monotonic()
        socks = open_connections(envoy.listener_port, n)
        connect_s = time.monotonic() - t0
        try:
            # Let the first keepalives settle into their rhythm.
            time.sleep(3.0)
            g0 = envoy.guard_stats() if envoy.with_filter else {}
            t0 = thread_cpu_seconds(envoy.process.pid, TIMER_THREAD)
            e0, r0, w0 = cpu_seconds(envoy.process.pid), cpu_seconds(redis.process.pid), time.monotonic()
            say(f"  {config}: {n:,} connected in {connect_s:.1f} s; holding {hold:g} s")
            time.sleep(hold)
            e1, r1, w1 = cpu_seconds(envoy.process.pid), cpu_seconds(redis.process.pid), time.monotonic()
            t1 = thread_cpu_seconds(envoy.process.pid, TIMER_THREAD)
            g1 = envoy.guard_stats() if envoy.with_filter else {}
            after = envoy_memory(envoy)
            envoy_fds = len(os.listdir(f"/proc/{envoy.process.pid}/fd"))
            sockets = check_sockets(socks)
            if not envoy.alive():
                raise LabError(f"Envoy died:\n{envoy.log_text()[-2000:]}")
        finally:
            for s in socks:
                s.close()
    wall = w1 - w0
    pings = (g1.get("keepalive.sent", 0) - g0.get("keepalive.sent", 0)) if envoy.with_filter else None
    answered = (g1.get("keepalive.answered", 0) - g0.get("keepalive.answered", 0)) \
        if envoy.with_filter else None
    others = {}
    for name in ("keepalive.failed", "keepalive.refused", "reconnect_signals", "passthrough",
                 "probe.held"):
        if envoy.with_filter:
            others[name] = int(g1.get(name, 0))
    vm_mem = g1.get("vm_memory_bytes") if envoy.with_filter else None
    return Phase(rnd, config, n, connect_s, wall, (e1 - e0) / wall * 100, (r1 - r0) / wall * 100,
                 pings, None if pings is None else pings / wall, answered,
                 before["rss"], after["rss"], before["allocated"], after["allocated"],
                 None if vm_mem is None else int(vm_mem),
                 None if not envoy.with_filter else int(g1.get("connections", 0)),
                 sockets, others, envoy_fds,
                 None if t0 is None or t1 is None else (t1 - t0) / wall * 100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", type=Path, default=default_wasm_path())
    ap.add_argument("--native", type=Path, default=default_native_path())
    ap.add_argument("--builds", default="wasm,native",
                    help="the filter's builds to run beside bare tcp_proxy (default wasm,native)")
    ap.add_argument("--connections", type=int, default=None, help="default 10000 (1000 with --quick)")
    ap.add_argument("--hold", type=float, default=None, help="seconds measured (default 30; 5 with --quick)")
    ap.add_argument("--keepalive", default="1s", help="filter keepalive_interval (default 1s)")
    ap.add_argument("--rounds", type=int, default=1, help="bare/guard pairs (default 1)")
    ap.add_argument("--quick", action="store_true", help="1,000 connections, 5 s")
    args = ap.parse_args()
    install_sigterm_handler()
    n = args.connections or (1000 if args.quick else 10_000)
    hold = args.hold or (5.0 if args.quick else 30.0)
    modules = {b: {"wasm": args.wasm, "native": args.native}.get(b)
               for b in args.builds.split(",") if b}
    for build, path in modules.items():
        if path is None or not path.exists():
            print(f"error: no {build} build at {path}; run `make build` / `make build-native`",
                  file=sys.stderr)
            return 2
    nofile = raise_nofile(max(NOFILE, 2 * n + ENVOY_OTHER_FDS))
    # Envoy holds two sockets per proxied connection (client side and Redis side) in one process.
    fit = (nofile - ENVOY_OTHER_FDS) // 2
    capped_note = ""
    if n > fit:
        capped_note = (f"{n:,} connections need {2 * n + ENVOY_OTHER_FDS:,} file descriptors in "
                       f"Envoy, but RLIMIT_NOFILE is {nofile:,} and cannot be raised here (no "
                       f"CAP_SYS_RESOURCE); running {fit:,} instead")
        print(f"note: {capped_note}", flush=True)
        n = fit
    plugin_config = {"keepalive_interval": args.keepalive}
    header = machine_facts(args.wasm if "wasm" in modules else None)
    header["load average before"] = loadavg()
    header["RLIMIT_NOFILE"] = f"{nofile:,}" + (f" ({capped_note})" if capped_note else "")
    stamp = time.strftime("%Y%m%d-%H%M%S")

    phases: List[Phase] = []
    try:
        with RedisServer(name="redis-scale", extra_config={"maxclients": "20000"}) as redis:
            maxclients = redis.direct().config_get("maxclients").get("maxclients")
            say(f"Redis :{redis.port} maxclients {maxclients}; RLIMIT_NOFILE {nofile}")
            for rnd in range(1, args.rounds + 1):
                for config, module in [("bare", None)] + list(modules.items()):
                    phases.append(run_phase(rnd, config, redis, module, n, hold, plugin_config))
                    p = phases[-1]
                    timer = ("" if p.timer_cpu_pct is None
                             else f" (timer thread {p.timer_cpu_pct:.2f}%)")
                    say(f"  {config}: Envoy {p.envoy_cpu_pct:.1f}% of a core{timer}, Redis "
                        f"{p.redis_cpu_pct:.1f}%, PINGs/s {fmt(p.pings_per_s, 0)}, RSS "
                        f"+{p.rss_per_conn / 1024:.2f} KiB/conn, Envoy fds {p.envoy_fds:,}, "
                        f"sockets {p.sockets}")
                    time.sleep(2.0)  # let TIME_WAIT and Redis settle between phases
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all()
    header["load average after"] = loadavg()

    headers = ["round", "config", "connections", "Envoy CPU % core", "timer thread % core",
               "Redis CPU % core",
               "PINGs/s (expected)", "answered", "Envoy RSS Δ/conn", "tcmalloc Δ/conn",
               "vm_memory_bytes", "guard conns", "client sockets"]
    interval_s = _seconds(args.keepalive)
    rows = []
    for p in phases:
        expected = f" ({n / interval_s:,.0f})" if p.config != "bare" and interval_s else ""
        rows.append([
            p.round, p.config if p.config == "bare" else f"{p.config} ({args.keepalive})",
            f"{p.connections:,}", fmt(p.envoy_cpu_pct, 1),
            "-" if p.timer_cpu_pct is None else fmt(p.timer_cpu_pct, 2), fmt(p.redis_cpu_pct, 1),
            ("-" if p.pings_per_s is None else fmt(p.pings_per_s, 0) + expected),
            "-" if p.answered is None else f"{p.answered:,}",
            f"{p.rss_per_conn / 1024:.2f} KiB",
            "n/a" if p.alloc_per_conn is None else f"{p.alloc_per_conn / 1024:.2f} KiB",
            "-" if p.config == "bare" else ("n/a" if p.vm_memory_bytes is None
                                            else f"{p.vm_memory_bytes / 2**20:.2f} MiB"),
            "-" if p.guard_connections is None else f"{p.guard_connections:,}",
            f"{p.sockets['quiet']:,} quiet, {p.sockets['stray_sockets']} stray, {p.sockets['closed']} closed",
        ])
    print()
    print(text_table(rows, headers))
    for p in phases:
        if any(p.other_stats.get(k) for k in ("keepalive.failed", "keepalive.refused",
                                                "reconnect_signals", "passthrough")):
            print(f"note: round {p.round} {p.config}: {p.other_stats}")
    print(f"load average before: {header['load average before']}, after: {header['load average after']}")

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    base = BENCH_DIR / f"scale-{stamp}"
    method = [
        f"{n:,} connections through one Envoy worker (--concurrency 1), each sent one GET and "
        f"read its reply, then idle; the filter's configuration {json.dumps(plugin_config)}.",
        f"Measured over {hold:g} s after all were open plus 3 s: CPU from /proc/<pid>/stat "
        "(utime+stime, all threads) / wall time; PINGs from the keepalive.sent counter; memory "
        "deltas from before opening the connections to the end of the hold (RSS from "
        "/proc/<pid>/statm; tcmalloc from server.memory_allocated).",
        "Client sockets checked at the end with a non-blocking read: 'quiet' = nothing to read.",
    ]
    md = [f"# redis-idle-guard scale, {header['date']}", ""]
    md += [f"- **{k}**: {v}" for k, v in header.items() if k != "date"]
    md += ["", "## Method", ""] + [f"- {m}" for m in method]
    md += ["", "## Results", "", md_table(rows, headers), ""]
    for p in phases:
        if p.other_stats:
            md.append(f"- round {p.round} {p.config} filter counters: {p.other_stats}")
    (Path(f"{base}.md")).write_text("\n".join(md) + "\n")
    (BENCH_DIR / "scale-latest.md").write_text("\n".join(md) + "\n")
    with open(f"{base}.csv", "w", newline="") as f:
        f.write("\n".join(f"# {k}: {v}" for k, v in header.items()) + "\n")
        wr = csv.writer(f)
        wr.writerow(["round", "config", "connections", "connect_s", "hold_s", "envoy_cpu_pct",
                     "redis_cpu_pct", "pings", "pings_per_s", "answered", "rss_before",
                     "rss_after", "rss_per_conn", "alloc_before", "alloc_after", "alloc_per_conn",
                     "vm_memory_bytes", "guard_connections", "sockets_quiet", "sockets_stray",
                     "sockets_closed", "envoy_fds", "timer_cpu_pct"])
        for p in phases:
            wr.writerow([p.round, p.config, p.connections, f"{p.connect_s:.2f}", f"{p.hold_s:.2f}",
                         f"{p.envoy_cpu_pct:.2f}", f"{p.redis_cpu_pct:.2f}", p.pings,
                         "" if p.pings_per_s is None else f"{p.pings_per_s:.1f}", p.answered,
                         p.rss_before, p.rss_after, f"{p.rss_per_conn:.0f}", p.alloc_before,
                         p.alloc_after, "" if p.alloc_per_conn is None else f"{p.alloc_per_conn:.0f}",
                         p.vm_memory_bytes, p.guard_connections, p.sockets["quiet"],
                         p.sockets["stray_sockets"], p.sockets["closed"], p.envoy_fds,
                         "" if p.timer_cpu_pct is None else f"{p.timer_cpu_pct:.3f}"])
    say(f"wrote {Path(f'{base}.md').relative_to(REPO_ROOT)}, {Path(f'{base}.csv').relative_to(REPO_ROOT)}")
    return 0


def _seconds(d: str) -> Optional[float]:
    for unit, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if d.endswith(unit):
            try:
                return float(d[: -len(unit)]) * mult
            except ValueError:
                return None
    return None


if __name__ == "__main__":
    sys.exit(main())
