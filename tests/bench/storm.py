#!/usr/bin/env python3
"""Reconnect storms: how the filter's reconnect signals hit Envoy and Redis after a Redis stall.

    .venv/bin/python tests/bench/storm.py [--connections 5000] [--workers 1,2]
        [--builds wasm,native] [--keepalive 1500ms --ping-timeout 500ms] [--idle 3] [--stall 3]
        [--compare-wasm OLD.wasm --compare-native OLD.so]

For each build (and each --compare-* build, measured the same way) and each Envoy worker count:
a fresh Redis and Envoy; --connections idle connections through the filter (each sent one GET);
then one more GET on all of them in one sweep, so that they go quiet together; after --idle
seconds Redis is stalled (SIGSTOP) for --stall seconds, longer than keepalive_interval +
ping_timeout, so every idle connection PINGs into the stall and is closed; each pool slot
reconnects at once (new connection, PING, until +PONG). Then, once all are back, a second stall
--idle seconds after the last reconnect: the pool that came back together goes quiet together.

Recorded per stall (tests/lab/storm.py): the clients' EOF times (closes per 100 ms, the busiest
100 ms's share), the reconnects hitting Envoy's listener, Envoy's connects to Redis and their
timeouts, Redis's listen queue and the kernel's listen overflows while Redis is stalled, Redis's
accepted connections after it, and the time from the thaw until every slot works again. The
filter's configuration is the defaults scaled by 1/10 (15 s / 5 s / 25 s → 1.5 s / 0.5 s / 2.5 s).
Results go to stdout and .lab/bench/storm-<date>.{md,csv}.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import common  # noqa: F401  (sets sys.path for the lab)
from common import BENCH_DIR, REPO_ROOT, fmt, loadavg, machine_facts, md_table, say, text_table
from lab import EnvoyProxy, LabError, RedisServer, default_native_path, default_wasm_path
from lab.procs import install_sigterm_handler, stop_all
from lab.storm import BUCKET, CLUSTER, Pool, Sampler, Stall, burst, open_pool
from scale import ENVOY_OTHER_FDS, raise_nofile

NOFILE = 200_000
# Past the thaw: long enough for Envoy's 1 s connect timeouts and the clients' retries.
RECOVER_S = 30.0


# Log lines that mean the filter failed (as tests/e2e/conftest.py): a Wasm VM that failed
# passes every connection of its worker through unfiltered from then on.
VM_FAILURE = re.compile(r"panicked|Uncaught \w+Error|Wasm VM failed|wasm trap|"
                        r"Function: proxy_on_\w+ failed", re.IGNORECASE)


@dataclass
class Run:
    build: str        # "wasm", "native", "wasm before"…
    workers: int
    stall_no: int
    sweep_s: float
    stall: Stall
    vm_failures: List[str] = field(default_factory=list)


def run_config(label: str, module: Path, workers: int, n: int, plugin_config: Dict[str, str],
               idle: float, stall_s: float, stalls: int, sweep_runs: List[Run]) -> None:
    with RedisServer(name="redis-storm", extra_config={"maxclients": "20000"}) as redis, \
            EnvoyProxy(redis.address, module=module, plugin_config=plugin_config,
                       concurrency=workers, name=f"envoy-storm-{label.split()[0]}",
                       cluster_options=CLUSTER) as envoy:
        say(f"  {label}, {workers} worker(s): opening {n:,} connections")
        t0 = time.monotonic()
        socks = open_pool(envoy.listener_port, n)
        say(f"  {label}: {n:,} connected in {time.monotonic() - t0:.1f} s")
        sweep = burst(socks)
        quiet_at = time.monotonic()
        pool = Pool(envoy.listener_port, socks)
        sampler = Sampler(envoy, redis)
        sampler.start()
        try:
            for k in range(1, stalls + 1):
                st = pool.run(redis, freeze_at=quiet_at + idle, stall_s=stall_s,
                              end_by=quiet_at + idle + stall_s + RECOVER_S, sampler=sampler)
                failures = [ln for ln in envoy.log_text().splitlines() if VM_FAILURE.search(ln)]
                sweep_runs.append(Run(label, workers, k, sweep if k == 1 else 0.0, st,
                                      failures))
                say(f"  {label}, {workers}w, stall {k}: {len(st.closes):,} closed, busiest "
                    f"100 ms {st.busiest_share():.0%}, back in {fmt(st.recovery_s(), 2)} s "
                    f"({len(st.ready):,}/{len(st.closes):,}), reconnects {len(st.attempts):,}"
                    + (f", stray bytes {st.stray:,}" if st.stray else "")
                    + (f"; THE FILTER FAILED: {failures[0][-160:]}" if failures else ""))
                if not st.recovered:
                    break
                quiet_at = max(st.ready) if st.ready else time.monotonic()
        finally:
            sampler.stop()
            pool.close()
        if not envoy.alive():
            raise LabError(f"Envoy died:\n{envoy.log_text()[-2000:]}")


def text_timeline(run: Run, start: float, end: float, width: int = 60) -> str:
    """Closes per 100 ms as bars, with reconnects (client → Envoy) beside them."""
    st = run.stall
    closes = st.buckets(st.closes, start, end)
    attempts = st.buckets(st.attempts, start, end)
    ready = st.buckets(st.ready, start, end)
    top = max(closes + [1])
    lines = [f"{run.build}, {run.workers} worker(s), stall {run.stall_no}: closes per 100 ms "
             f"(t = 0: SIGSTOP; SIGCONT at {st.thawed_at - st.frozen_at:.1f} s)",
             f"{'t (s)':>6} {'closes':>6} {'reconn':>6} {'ready':>6}"]
    for i, c in enumerate(closes):
        if c == 0 and attempts[i] == 0 and ready[i] == 0:
            continue
        t = start + i * BUCKET
        bar = "#" * max(1 if c else 0, round(c / top * width))
        lines.append(f"{t:6.1f} {c:6d} {attempts[i]:6d} {ready[i]:6d} {bar}")
    return "\n".join(lines)


def summary_row(run: Run) -> List[str]:
    st = run.stall
    rel = sorted(t - st.frozen_at for t in st.closes)
    window = f"{rel[0]:.2f}–{rel[-1]:.2f}" if rel else "-"
    peak_closes = max(st.buckets(st.closes, 0.0, st.thawed_at - st.frozen_at + 1.0) + [0])
    peak_attempts = max(st.buckets(st.attempts, 0.0, st.ended_at - st.frozen_at) + [0])
    overflows = st.counter_increase("kernel.listen_overflows")
    return [
        run.build, str(run.workers), str(run.stall_no), f"{st.connections:,}",
        f"{len(st.closes):,}", window, f"{peak_closes:,}", f"{st.busiest_share():.0%}",
        f"{peak_attempts:,}", per_bucket(st.peak_rate("cluster.redis.upstream_cx_total")),
        f"{int(st.counter_increase('cluster.redis.upstream_cx_connect_timeout') or 0):,}",
        fmt(st.sampled_max("redis.listen_queue"), 0),
        "n/a" if overflows is None else f"{int(overflows):,}",
        per_bucket(st.peak_rate("redis.connections_received")),
        f"{len(st.attempts):,}", fmt(st.recovery_s(), 2),
        f"{st.stray:,}", "yes" if run.vm_failures else "no",
    ]


def per_bucket(rate: Optional[float]) -> str:
    return fmt(None if rate is None else rate * BUCKET, 0)


HEADERS = ["build", "workers", "stall", "conns", "closed", "closes at (s)", "max closes/100ms",
           "busiest 100 ms", "max reconnects/100ms", "max Envoy→Redis cx/100ms",
           "connect timeouts", "Redis listen queue max", "listen overflows",
           "max Redis accepts/100ms", "reconnects", "back after thaw (s)",
           "stray bytes at clients", "filter failed"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", type=Path, default=default_wasm_path())
    ap.add_argument("--native", type=Path, default=default_native_path())
    ap.add_argument("--builds", default="wasm,native")
    ap.add_argument("--compare-wasm", type=Path, default=None,
                    help="another .wasm measured the same way (e.g. a build before a change)")
    ap.add_argument("--compare-native", type=Path, default=None)
    ap.add_argument("--label", default="", help="added to the builds' names (e.g. spread)")
    ap.add_argument("--compare-label", default="compare",
                    help="added to the --compare-* builds' names (default compare)")
    ap.add_argument("--connections", type=int, default=None, help="default 5000 (500 --quick)")
    ap.add_argument("--workers", default="1,2", help="Envoy worker counts (default 1,2)")
    ap.add_argument("--keepalive", default="1500ms")
    ap.add_argument("--ping-timeout", default="500ms")
    ap.add_argument("--probe-after", default="2500ms")
    ap.add_argument("--idle", type=float, default=3.0,
                    help="seconds from going quiet to the stall (default 3: two keepalives)")
    ap.add_argument("--stall", type=float, default=3.0, help="stall seconds (default 3)")
    ap.add_argument("--stalls", type=int, default=2, help="stalls per configuration (default 2)")
    ap.add_argument("--quick", action="store_true", help="500 connections, one worker count")
    args = ap.parse_args()
    install_sigterm_handler()
    n = args.connections or (500 if args.quick else 5000)
    workers = [int(w) for w in (("1",) if args.quick else args.workers.split(","))]
    builds: List[Tuple[str, Path]] = []
    for b in args.builds.split(","):
        builds.append((f"{b} {args.label}".strip(), {"wasm": args.wasm, "native": args.native}[b]))
    if args.compare_wasm:
        builds.append((f"wasm {args.compare_label}", args.compare_wasm))
    if args.compare_native:
        builds.append((f"native {args.compare_label}", args.compare_native))
    for label, path in builds:
        if not path.exists():
            print(f"error: no {label} build at {path}; run `make build build-native`",
                  file=sys.stderr)
            return 2
    nofile = raise_nofile(max(NOFILE, 4 * n + ENVOY_OTHER_FDS))
    if 2 * n + ENVOY_OTHER_FDS > nofile:
        print(f"error: {n:,} connections need more than RLIMIT_NOFILE {nofile:,}", file=sys.stderr)
        return 2
    plugin_config = {"keepalive_interval": args.keepalive, "ping_timeout": args.ping_timeout,
                     "probe_after": args.probe_after}
    header = machine_facts(args.wasm if "wasm" in args.builds else None)
    header["load average before"] = loadavg()
    header["RLIMIT_NOFILE"] = f"{nofile:,}"
    header["filter configuration"] = json.dumps(plugin_config)
    stamp = time.strftime("%Y%m%d-%H%M%S")

    runs: List[Run] = []
    try:
        for label, path in builds:
            for w in workers:
                run_config(label, path, w, n, plugin_config, args.idle, args.stall, args.stalls,
                           runs)
                time.sleep(2.0)  # let TIME_WAIT and the last closes settle
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all()
    header["load average after"] = loadavg()

    rows = [summary_row(r) for r in runs]
    timelines = [text_timeline(r, -0.2, r.stall.thawed_at - r.stall.frozen_at + 1.5)
                 for r in runs]
    print()
    print(text_table(rows, HEADERS))
    for t in timelines:
        print()
        print(t)
    sweeps = ", ".join(f"{r.build} {r.workers}w {r.sweep_s * 1000:.0f} ms" for r in runs
                       if r.stall_no == 1)
    print(f"\nsweep (all connections quiet within): {sweeps}")
    print(f"load average before: {header['load average before']}, "
          f"after: {header['load average after']}")

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    base = BENCH_DIR / f"storm-{stamp}"
    method = [
        f"{n:,} connections per configuration through Envoy with the filter "
        f"{json.dumps(plugin_config)}; each sent one GET; then one GET on all of them in one "
        "sweep (they go quiet together).",
        f"Stall 1: {args.idle:g} s after the sweep, SIGSTOP on Redis for {args.stall:g} s, then "
        "SIGCONT. Each pool slot reconnects at once when its connection is closed (new "
        "connection to Envoy, PING, until +PONG). Stall 2: the same, "
        f"{args.idle:g} s after the last slot came back.",
        "Closes: when the client's epoll loop read EOF on an idle connection. Reconnects: the "
        "client's connects to Envoy. Envoy→Redis: cluster.redis.upstream_cx_total, sampled every "
        "100 ms. Listen queue: `ss` Recv-Q of Redis's listener; overflows: the kernel's "
        "TcpExtListenOverflows (whole network namespace). Redis accepts: INFO "
        "total_connections_received after the thaw.",
        "Busiest 100 ms: the largest share of the closes in any 100 ms window.",
    ]
    md = [f"# redis-idle-guard reconnect storm, {header['date']}", ""]
    md += [f"- **{k}**: {v}" for k, v in header.items() if k != "date"]
    md += ["", "## Method", ""] + [f"- {m}" for m in method]
    md += ["", "## Results", "", md_table(rows, HEADERS), "", f"Sweep durations: {sweeps}", ""]
    md += ["## Timelines", ""] + [f"```\n{t}\n```\n" for t in timelines]
    Path(f"{base}.md").write_text("\n".join(md) + "\n")
    (BENCH_DIR / "storm-latest.md").write_text("\n".join(md) + "\n")
    with open(f"{base}.csv", "w", newline="") as f:
        f.write("\n".join(f"# {k}: {v}" for k, v in header.items()) + "\n")
        wr = csv.writer(f)
        wr.writerow(["build", "workers", "stall", "t_s", "closes", "reconnects", "ready"])
        for r in runs:
            st = r.stall
            end = st.ended_at - st.frozen_at
            for i, (c, a, y) in enumerate(zip(st.buckets(st.closes, -1.0, end),
                                              st.buckets(st.attempts, -1.0, end),
                                              st.buckets(st.ready, -1.0, end))):
                wr.writerow([r.build, r.workers, r.stall_no, f"{-1.0 + i * BUCKET:.1f}", c, a, y])
    say(f"wrote {Path(f'{base}.md').relative_to(REPO_ROOT)}, "
        f"{Path(f'{base}.csv').relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
