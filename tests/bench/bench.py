#!/usr/bin/env python3
"""redis-idle-guard benchmark: what the filter costs on the data path.

    .venv/bin/python tests/bench/bench.py [--quick] [--rounds 5] [--wasm PATH] [--native PATH]

Configurations, all to the same redis-server on 127.0.0.1, each Envoy with one worker
(`--concurrency 1`), nothing pinned:
  A  direct Redis (no Envoy)
  B  Envoy, bare tcp_proxy
  F  Envoy, a no-op proxy-wasm filter (tests/bench/noop_filter: every callback returns Continue)
     + tcp_proxy: the floor of any Wasm network filter, so "C vs F" is what redis-idle-guard
     itself adds on top of Envoy's Wasm plumbing
  G  the same no-op filter, but pausing every client read and continuing it at once (what
     redis-idle-guard does to keep Envoy's read buffer for a PING from the timer, and nothing
     else): "G vs F" is the price of that technique
  C  Envoy, redis-idle-guard, Wasm build (default configuration) + tcp_proxy
  O  Envoy, a no-op native filter (tests/bench/noop_native: takes every buffer's slices and
     looks at every byte, nothing else) + tcp_proxy: the floor of any native filter that must
     see the bytes, so "N vs O" is what redis-idle-guard itself adds
  N  Envoy, redis-idle-guard, native build (default configuration) + tcp_proxy
  D  Envoy, redis-idle-guard (Wasm) with keepalive_interval 100ms, probe_after 100ms + tcp_proxy
  E  Envoy redis_proxy (answers PING itself, RESP2 only, one pooled upstream connection)

Then a calibration (skip it with --no-calibrate), GET P1 16 B only, interleaved rounds of B F G C
and two more variants of the no-op filter: S, which spins a loop of known instruction count in
every data callback, and K, which makes a known number of clock host calls in each. S − F and
K − F give what a wasm instruction and a host call cost in Envoy's V8 on this machine, so the
filter's deterministic counts (instructions and host calls per request) turn into a predicted
cost per request, to hold against the measured C − G, which is noisier.

Workloads (redis-benchmark, 50 clients): SET and GET, pipeline 1 and 16, values of 16 B and
100 KB. Rounds are interleaved (for every workload A B C D E, then the next workload; the whole
list again each round), after one unrecorded warm-up pass (V8 tiers the module up). For each
run: throughput, Envoy's CPU time per request (utime+stime of the Envoy process from
/proc/<pid>/stat over the run, divided by requests) and Redis's. Then latency at a fixed rate:
one connection, GET of a 16 B value paced at --latency-rate requests/s (absolute schedule, one
request outstanding), time from send() to the complete reply, measured in this Python process.

Before the rounds it runs the instruction count (tests/bench_instructions.rs under the
wasmtime host with fuel). Writes a table to stdout and CSV + markdown under .lab/bench/.
Every process it starts is stopped on exit (the lab's ManagedProcess), also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import common  # noqa: F401  (sets sys.path for the lab)
from common import (BENCH_DIR, REPO_ROOT, RedisProxyEnvoy, cpu_seconds, fmt, fmt_range,
                    loadavg, machine_facts, md_table, median, percentile, say, sha256_short,
                    spread, text_table)
from lab import (EnvoyProxy, FilterModule, LabError, RedisServer, default_native_path,
                 default_wasm_path)
from lab.procs import ManagedProcess, install_sigterm_handler, stop_all, unique_workdir

REDIS_BENCHMARK = "/usr/bin/redis-benchmark"
CLIENTS = 50
FREQUENT = {"keepalive_interval": "100ms", "probe_after": "100ms"}

CONFIGS = {
    "A": "direct Redis",
    "B": "Envoy tcp_proxy",
    "F": "Envoy + no-op Wasm filter (the floor)",
    "G": "Envoy + no-op Wasm filter that pauses+continues each read",
    "C": "Envoy + guard, Wasm (defaults)",
    "O": "Envoy + no-op native filter that reads every byte (the floor)",
    "N": "Envoy + guard, native (defaults)",
    "D": "Envoy + guard, Wasm (keepalive 100ms, probe 100ms)",
    "E": "Envoy redis_proxy",
}
ALL_CONFIGS = "ABFGCONDE"
# Calibration variants of the no-op filter (tests/bench/noop_filter).
SPIN_ROUNDS = 4000
CLOCK_CALLS = 50
BUFFER_READS = 50
CALIBRATION = {
    "B": "Envoy tcp_proxy",
    "F": "no-op Wasm filter",
    "G": "no-op filter, pause+continue each read",
    "S": f"no-op filter + spin={SPIN_ROUNDS} per data callback",
    "K": f"no-op filter + {CLOCK_CALLS} clock host calls per data callback",
    "R": f"no-op filter + {BUFFER_READS} 1-byte buffer reads per data callback",
    "C": "guard (defaults)",
}


@dataclass(frozen=True)
class Workload:
    op: str  # SET or GET
    pipeline: int
    size: int
    requests: int

    @property
    def name(self) -> str:
        size = f"{self.size // 1024}KB" if self.size >= 1024 else f"{self.size}B"
        return f"{self.op} P{self.pipeline} {size}"


def workloads(scale: float) -> List[Workload]:
    # Requests sized for about 1–3 s per run on a 2-core machine; 100 KB values need fewer.
    base = {(1, 16): 100_000, (16, 16): 1_000_000, (1, 102400): 10_000, (16, 102400): 10_000}
    out = []
    for size in (16, 102400):
        for pipeline in (1, 16):
            n = max(CLIENTS * pipeline * 4, int(base[(pipeline, size)] * scale))
            for op in ("SET", "GET"):  # SET first: GET then reads a value of this size
                out.append(Workload(op, pipeline, size, n))
    return out


@dataclass
class Run:
    round: int
    workload: Workload
    config: str
    rps: Optional[float]  # None: the run failed (error says why)
    wall_s: float
    envoy_cpu_s: Optional[float]
    redis_cpu_s: float
    rb_p50_ms: Optional[float]
    rb_p99_ms: Optional[float]
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.rps is not None

    @property
    def envoy_us_per_req(self) -> Optional[float]:
        if self.envoy_cpu_s is None or not self.ok:
            return None
        return self.envoy_cpu_s / self.workload.requests * 1e6

    @property
    def redis_us_per_req(self) -> Optional[float]:
        return self.redis_cpu_s / self.workload.requests * 1e6 if self.ok else None


@dataclass
class Latency:
    round: int
    config: str
    samples_us: List[float] = field(default_factory=list)
    late: int = 0


class Target:
    """One configuration: where to connect, and whose CPU to count."""

    def __init__(self, key: str, port: int, envoy: Optional[EnvoyProxy]):
        self.key = key
        self.port = port
        self.envoy = envoy

    @property
    def envoy_pid(self) -> Optional[int]:
        return self.envoy.process.pid if self.envoy is not None else None


# ---- redis-benchmark --------------------------------------------------------------------------

_CSV_ROW = re.compile(r'^"(SET|GET)","([\d.]+)","([\d.]+)","([\d.]+)","([\d.]+)","([\d.]+)","([\d.]+)"')


class RunFailed(Exception):
    """redis-benchmark did not produce a result (it exited on an error, or hung)."""


def redis_benchmark(port: int, w: Workload, timeout: float) -> Tuple[float, float, float]:
    """Run one redis-benchmark test; returns (rps, p50 ms, p99 ms)."""
    argv = [REDIS_BENCHMARK, "-h", "127.0.0.1", "-p", str(port), "-c", str(CLIENTS),
            "-n", str(w.requests), "-P", str(w.pipeline), "-d", str(w.size),
            "-t", w.op.lower(), "--csv"]
    workdir = unique_workdir("redis-benchmark")
    log = workdir / "out.log"
    proc = ManagedProcess("redis-benchmark", argv, log, cwd=workdir).start()
    try:
        proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"no result within {timeout:.0f} s (hung)")
    finally:
        proc.stop()
    text = proc.log_text()
    for line in text.splitlines():
        m = _CSV_ROW.match(line.strip())
        if m:
            _test, rps, _avg, _min, p50, _p95, p99 = m.groups()
            return float(rps), float(p50), float(p99)
    errors = [ln.strip() for ln in text.splitlines() if "rror" in ln or "closed" in ln]
    raise RunFailed(f"exit {proc.returncode()}, no result"
                    + (f": {errors[0][:200]}" if errors else ""))


def measure(target: Target, redis: RedisServer, w: Workload, rnd: int, timeout: float) -> Run:
    e0 = cpu_seconds(target.envoy_pid) if target.envoy_pid else None
    r0 = cpu_seconds(redis.process.pid)
    t0 = time.monotonic()
    error = ""
    try:
        rps, p50, p99 = redis_benchmark(target.port, w, timeout)
    except RunFailed as exc:
        rps, p50, p99, error = None, None, None, str(exc)
    wall = time.monotonic() - t0
    e1 = cpu_seconds(target.envoy_pid) if target.envoy_pid else None
    r1 = cpu_seconds(redis.process.pid)
    if target.envoy is not None and not target.envoy.alive():
        raise LabError(f"Envoy for {target.key} died:\n{target.envoy.log_text()[-2000:]}")
    if error:
        say(f"  FAILED: {w.name} on {target.key} (round {rnd or 'warm-up'}): {error}")
    return Run(rnd, w, target.key, rps, wall, None if e0 is None else e1 - e0, r1 - r0, p50, p99,
               error)


# ---- latency at a fixed rate ------------------------------------------------------------------

LATENCY_KEY = b"bench:latency"
LATENCY_VALUE = b"v" * 16


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def latency_run(port: int, rate: float, requests: int) -> Tuple[List[float], int]:
    """One connection, GET paced at `rate`/s on an absolute schedule, one request outstanding.
    Returns (latencies in µs from send() to the complete reply, sends late by > 1 interval)."""
    get = _resp(b"GET", LATENCY_KEY)
    want = b"$%d\r\n%s\r\n" % (len(LATENCY_VALUE), LATENCY_VALUE)
    interval = 1.0 / rate
    samples: List[float] = []
    late = 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # One unmeasured request first: the connection is set up on every hop.
        s.sendall(get)
        _read_exactly(s, len(want))
        start = time.perf_counter()
        for i in range(requests):
            due = start + i * interval
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            elif now - due > interval:
                late += 1
            t0 = time.perf_counter_ns()
            s.sendall(get)
            reply = _read_exactly(s, len(want))
            t1 = time.perf_counter_ns()
            if reply != want:
                raise LabError(f"latency client: unexpected reply {reply[:80]!r}")
            samples.append((t1 - t0) / 1000.0)
    return samples, late


def _read_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise LabError("latency client: connection closed")
        buf += chunk
    return buf


# ---- instruction counts (wasmtime fuel) -------------------------------------------------------

def run_instruction_count(noop_wasm: Optional[Path] = None) -> Tuple[List[dict], str]:
    """Run tests/bench_instructions.rs (test profile, not --release: that would build wasmtime
    with LTO) and parse its BENCH_INSTR lines."""
    argv = ["cargo", "test", "--test", "bench_instructions", "--", "--ignored", "--nocapture"]
    say("instruction count: " + " ".join(argv))
    env = dict(os.environ)
    if noop_wasm is not None and noop_wasm.exists():
        env["REDIS_IDLE_GUARD_NOOP_WASM"] = str(noop_wasm)
    out = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=3600,
                         env=env)
    rows = [json.loads(line.split(" ", 1)[1]) for line in out.stdout.splitlines()
            if line.startswith("BENCH_INSTR ")]
    if out.returncode != 0 or not rows:
        raise LabError(f"bench_instructions failed (exit {out.returncode}):\n"
                       f"{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    wasm = REPO_ROOT / "target" / "wasm-for-tests" / "wasm32-unknown-unknown" / "release" / \
        "redis_idle_guard.wasm"
    return rows, sha256_short(wasm)


def instruction_tables(rows: List[dict]) -> Tuple[List[list], List[str], List[list], List[str]]:
    req_headers = ["workload", "downstream", "upstream", "total / request", "host calls / request"]
    req_rows = []
    for r in rows:
        if r["kind"] != "request":
            continue
        size = f"{r['size'] // 1024}KB" if r["size"] >= 1024 else f"{r['size']}B"
        req_rows.append([f"{r['op']} P{r['pipeline']} {size}", fmt(r["fuel_downstream"], 0),
                         fmt(r["fuel_upstream"], 0), fmt(r["fuel_total"], 0),
                         fmt(r["host_calls"], 2)])
    ka_headers = ["idle connections", "empty tick", "tick, per PING sent", "PONG removal",
                  "per keepalive, steady state"]
    ka_rows = []
    for r in rows:
        if r["kind"] == "keepalive":
            ka_rows.append([f"{r['connections']:,}", fmt(r["fuel_empty_tick"], 0),
                            fmt(r["fuel_tick_per_ping"], 0), fmt(r["fuel_pong_removal"], 0),
                            fmt(r["fuel_per_keepalive_steady"], 0)])
        elif r["kind"] == "probe":
            ka_rows.append(["probe (1 conn): held GET + PING + PONG + release + reply", "", "",
                            "", fmt(r["fuel_per_probed_request"], 0)])
    return req_rows, req_headers, ka_rows, ka_headers


# ---- report -----------------------------------------------------------------------------------

def summarize(runs: List[Run], wl: List[Workload], keys: List[str]):
    """Rows of the throughput/CPU table: medians and min–max over rounds, and per-round ratios
    against B (same round, same workload)."""
    by = {(r.round, r.workload, r.config): r for r in runs}
    rounds = sorted({r.round for r in runs})
    rows = []
    for w in wl:
        for k in keys:
            runs_k = [by[(n, w, k)] for n in rounds if (n, w, k) in by]
            mine = [r for r in runs_k if r.ok]
            if not runs_k:
                continue
            if not mine:
                rows.append({"workload": w.name, "config": k, "requests": w.requests,
                             "runs_ok": f"0/{len(runs_k)}"})
                continue
            rps = [r.rps for r in mine]
            cpu = [r.envoy_us_per_req for r in mine]
            rcpu = [r.redis_us_per_req for r in mine]
            ratio, cpu_ratio, ratio_f = [], [], []
            for n in rounds:
                if (n, w, k) in by and (n, w, "F") in by and by[(n, w, k)].ok and by[(n, w, "F")].ok:
                    ratio_f.append(by[(n, w, k)].rps / by[(n, w, "F")].rps)
                if (n, w, k) in by and (n, w, "B") in by and by[(n, w, k)].ok and by[(n, w, "B")].ok:
                    ratio.append(by[(n, w, k)].rps / by[(n, w, "B")].rps)
                    mc, bc = by[(n, w, k)].envoy_us_per_req, by[(n, w, "B")].envoy_us_per_req
                    if mc is not None and bc:
                        cpu_ratio.append(mc / bc)
            rows.append({
                "workload": w.name, "config": k, "requests": w.requests,
                "runs_ok": f"{len(mine)}/{len(runs_k)}",
                "rps_median": median(rps), "rps_min": min(rps), "rps_max": max(rps),
                "ratio_vs_B_median": median(ratio), "ratio_vs_B_min": min(ratio) if ratio else None,
                "ratio_vs_B_max": max(ratio) if ratio else None,
                "ratio_vs_F_median": median(ratio_f) if ratio_f else None,
                "envoy_us_per_req_median": median(cpu),
                "envoy_us_per_req_min": min([c for c in cpu if c is not None], default=None),
                "envoy_us_per_req_max": max([c for c in cpu if c is not None], default=None),
                "envoy_cpu_vs_B_median": median(cpu_ratio),
                "envoy_cpu_vs_B_min": min(cpu_ratio) if cpu_ratio else None,
                "envoy_cpu_vs_B_max": max(cpu_ratio) if cpu_ratio else None,
                "redis_us_per_req_median": median(rcpu),
                "rb_p50_ms_median": median([r.rb_p50_ms for r in mine]),
                "rb_p99_ms_median": median([r.rb_p99_ms for r in mine]),
            })
    return rows


def _r(lo, hi):
    return None if lo is None else (lo, hi)


def throughput_table(summary: List[dict]) -> Tuple[List[list], List[str]]:
    headers = ["workload", "cfg", "krps median", "krps min–max", "rps vs B", "vs B min–max",
               "rps vs F", "Envoy µs/req", "µs/req min–max", "CPU vs B", "Redis µs/req", "runs ok"]
    rows = []
    for s in summary:
        if "rps_median" not in s:
            rows.append([s["workload"], s["config"]] + ["failed"] + ["n/a"] * 8 + [s["runs_ok"]])
            continue
        rows.append([
            s["workload"], s["config"],
            fmt(s["rps_median"] / 1000, 1), fmt_range((s["rps_min"] / 1000, s["rps_max"] / 1000), 1),
            fmt(s["ratio_vs_B_median"], 2), fmt_range(_r(s["ratio_vs_B_min"], s["ratio_vs_B_max"]), 2),
            fmt(s.get("ratio_vs_F_median"), 2),
            fmt(s["envoy_us_per_req_median"], 2),
            fmt_range(_r(s["envoy_us_per_req_min"], s["envoy_us_per_req_max"]), 2),
            fmt(s["envoy_cpu_vs_B_median"], 2), fmt(s["redis_us_per_req_median"], 2),
            s["runs_ok"],
        ])
    return rows, headers


def latency_table(lat: List[Latency], keys: List[str], rate: float) -> Tuple[List[list], List[str]]:
    headers = ["cfg", "samples", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs",
               "p50 per round min–max", "p99 per round min–max", "late sends"]
    rows = []
    for k in keys:
        mine = [x for x in lat if x.config == k]
        pooled = [s for x in mine for s in x.samples_us]
        if not pooled:
            continue
        p50s = [percentile(x.samples_us, 50) for x in mine]
        p99s = [percentile(x.samples_us, 99) for x in mine]
        rows.append([k, len(pooled), fmt(percentile(pooled, 50), 0), fmt(percentile(pooled, 90), 0),
                     fmt(percentile(pooled, 99), 0), fmt(percentile(pooled, 99.9), 0),
                     fmt(max(pooled), 0), fmt_range(spread(p50s), 0), fmt_range(spread(p99s), 0),
                     sum(x.late for x in mine)])
    return rows, headers


def write_outputs(stamp: str, header: Dict[str, str], method: List[str], runs: List[Run],
                  summary: List[dict], lat: List[Latency], tables: Dict[str, Tuple[list, list]],
                  instr_rows: List[dict], guard_deltas: Dict[str, Dict[str, float]]) -> List[Path]:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    base = BENCH_DIR / f"bench-{stamp}"
    paths = []
    comment = [f"# {k}: {v}" for k, v in header.items()]

    if runs:  # (none with --instructions-only)
        p = Path(f"{base}-runs.csv")
        with p.open("w", newline="") as f:
            f.write("\n".join(comment) + "\n")
            wr = csv.writer(f)
            wr.writerow(["round", "workload", "op", "pipeline", "size", "requests", "config", "rps",
                         "wall_s", "envoy_cpu_s", "envoy_us_per_req", "redis_cpu_s", "redis_us_per_req",
                         "rb_p50_ms", "rb_p99_ms", "error"])
            for r in runs:
                w = r.workload
                wr.writerow([r.round, w.name, w.op, w.pipeline, w.size, w.requests, r.config,
                             "" if r.rps is None else f"{r.rps:.1f}", f"{r.wall_s:.3f}",
                             "" if r.envoy_cpu_s is None else f"{r.envoy_cpu_s:.3f}",
                             "" if r.envoy_us_per_req is None else f"{r.envoy_us_per_req:.3f}",
                             f"{r.redis_cpu_s:.3f}",
                             "" if r.redis_us_per_req is None else f"{r.redis_us_per_req:.3f}",
                             r.rb_p50_ms, r.rb_p99_ms, r.error])
        paths.append(p)

        p = Path(f"{base}-summary.csv")
        with p.open("w", newline="") as f:
            f.write("\n".join(comment) + "\n")
            if summary:
                wr = csv.DictWriter(f, fieldnames=max((list(x.keys()) for x in summary), key=len))
                wr.writeheader()
                for s in summary:
                    wr.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in s.items()})
        paths.append(p)

        p = Path(f"{base}-latency.csv")
        with p.open("w", newline="") as f:
            f.write("\n".join(comment) + "\n")
            wr = csv.writer(f)
            wr.writerow(["round", "config", "samples", "p50_us", "p90_us", "p99_us", "p999_us", "max_us",
                         "late"])
            for x in lat:
                wr.writerow([x.round, x.config, len(x.samples_us)] +
                            [f"{percentile(x.samples_us, q):.1f}" for q in (50, 90, 99, 99.9)] +
                            [f"{max(x.samples_us):.1f}", x.late])
        paths.append(p)

    if instr_rows:
        p = Path(f"{base}-instructions.csv")
        keys = sorted({k for r in instr_rows for k in r if not isinstance(r[k], dict)})
        with p.open("w", newline="") as f:
            f.write("\n".join(comment) + "\n")
            wr = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            wr.writeheader()
            for r in instr_rows:
                wr.writerow(r)
        paths.append(p)

    md = [f"# redis-idle-guard bench, {header['date']}", ""]
    md += [f"- **{k}**: {v}" for k, v in header.items() if k != "date"]
    md += ["", "## Method", ""] + [f"- {m}" for m in method]
    for title, (rows, headers) in tables.items():
        md += ["", f"## {title}", "", md_table(rows, headers)]
    if guard_deltas:
        md += ["", "## Filter stats over the recorded runs", ""]
        for k, d in guard_deltas.items():
            changed = ", ".join(f"{n} +{v:g}" for n, v in sorted(d.items()) if v)
            md.append(f"- {k}: {changed or 'no change'}")
    failed = [r for r in runs if not r.ok]
    if failed:
        md += ["", "## Failed runs", ""]
        md += [f"- round {r.round}, {r.workload.name}, {r.config}: {r.error}" for r in failed]
    text = "\n".join(md) + "\n"
    p = Path(f"{base}.md")
    p.write_text(text)
    paths.append(p)
    (BENCH_DIR / "latest.md").write_text(text)
    return paths


# ---- main -------------------------------------------------------------------------------------

GAUGES = {"connections", "vm_memory_bytes"}


def guard_snapshot(targets: Dict[str, Target]) -> Dict[str, Dict[str, float]]:
    """The filter's counters (not its gauges) on each Envoy that runs it."""
    out = {}
    for k, t in targets.items():
        if t.envoy is not None and t.envoy.with_filter and k not in "FGOSKR":
            out[k] = {n: v for n, v in t.envoy.guard_stats().items() if n not in GAUGES}
    return out


def calibrate(targets: Dict[str, Target], redis: RedisServer, args, rounds: int, scale: float,
              run_timeout: float) -> List[Run]:
    """Interleaved rounds of B F G S K R C on GET P1 16 B (S, K and R started here)."""
    extra = {"S": f"spin={SPIN_ROUNDS}", "K": f"clock={CLOCK_CALLS}", "R": f"read={BUFFER_READS}"}
    for k, config in extra.items():
        envoy = EnvoyProxy(redis.address, module=args.noop_wasm, plugin_config=config,
                           name=f"envoy-{k}-noop-{config.split('=')[0]}")
        envoy.start()
        targets[k] = Target(k, envoy.listener_port, envoy)
    w = Workload("GET", 1, 16, max(CLIENTS * 4, int(100_000 * scale)))
    keys = list(CALIBRATION)
    # The main rounds left a 100 KB value under redis-benchmark's key: put a 16 B one back.
    measure(targets["B"], redis, Workload("SET", 1, 16, CLIENTS * 4), 0, run_timeout)
    for k in keys:  # warm-up (V8 tiers the spin loop up too)
        measure(targets[k], redis, Workload("GET", 1, 16, max(CLIENTS * 4, w.requests // 10)),
                0, run_timeout)
    runs: List[Run] = []
    for rnd in range(1, rounds + 1):
        line = []
        for k in keys:
            r = measure(targets[k], redis, w, rnd, run_timeout)
            runs.append(r)
            line.append(f"{k} {r.envoy_us_per_req:.1f}µs" if r.ok and r.envoy_cpu_s is not None
                        else f"{k} FAILED")
        say(f"  calibration {rnd}/{rounds}: " + "  ".join(line))
    return runs


def calibration_table(runs: List[Run], instr_rows: List[dict]) -> Tuple[List[list], List[str], List[str]]:
    """Per-round differences of Envoy µs/req, their medians, and what they imply."""
    by_round: Dict[int, Dict[str, float]] = {}
    for r in runs:
        if r.ok and r.envoy_us_per_req is not None:
            by_round.setdefault(r.round, {})[r.config] = r.envoy_us_per_req
    full = [v for v in by_round.values() if all(k in v for k in CALIBRATION)]

    def diff(a: str, b: str) -> List[float]:
        return [v[a] - v[b] for v in full]

    spin = next((r for r in instr_rows if r.get("kind") == "spin"), None)
    get_p1 = next((r for r in instr_rows if r.get("kind") == "request" and r["op"] == "GET"
                   and r["pipeline"] == 1 and r["size"] == 16), None)
    headers = ["quantity", "median", "min–max", "what it is"]
    rows = []
    for k in CALIBRATION:
        vals = [v[k] for v in full]
        rows.append([f"Envoy µs/req {k}", fmt(median(vals), 2) if vals else "n/a",
                     fmt_range(spread(vals), 2) if vals else "n/a", CALIBRATION[k]])
    pairs = [("F − B", "F", "B", "a Wasm filter's two VM calls per request"),
             ("G − F", "G", "F", "pause + continue per client read (the paused-buffer technique)"),
             ("G − B", "G", "B", "any filter using the technique: the floor"),
             ("C − G", "C", "G", "redis-idle-guard's own work per request"),
             ("C − B", "C", "B", "the whole filter"),
             ("S − F", "S", "F", f"{SPIN_ROUNDS:,} spin rounds in each of 2 callbacks"),
             ("K − F", "K", "F", f"{CLOCK_CALLS} host calls in each of 2 callbacks"),
             ("R − F", "R", "F", f"{BUFFER_READS} buffer reads in each of 2 callbacks")]
    med: Dict[str, float] = {}
    for label, a, b, what in pairs:
        d = diff(a, b)
        if d:
            med[label] = median(d)
            rows.append([label, fmt(med[label], 2), fmt_range(spread(d), 2), what])
    notes = [f"{len(full)} complete round(s); differences are taken within a round, then the "
             "median."]
    if spin and get_p1 and all(k in med for k in ("S − F", "K − F", "R − F")):
        instr = 2 * SPIN_ROUNDS * spin["fuel_per_round"]
        ns_per_instr = med["S − F"] * 1000 / instr
        ns_per_call = med["K − F"] * 1000 / (2 * CLOCK_CALLS)
        ns_per_read = med["R − F"] * 1000 / (2 * BUFFER_READS)
        calls = get_p1["host_calls_by_name"]
        reads = calls.get("proxy_get_buffer_bytes", 0)
        # Host calls besides continue_stream (in G already) and the buffer reads.
        others = sum(v for k, v in calls.items()
                     if k not in ("proxy_continue_stream", "proxy_get_buffer_bytes"))
        predicted_code = get_p1["fuel_total"] * ns_per_instr / 1000
        predicted_calls = (others * ns_per_call + reads * ns_per_read) / 1000
        rows.append(["ns per wasm instruction", fmt(ns_per_instr, 3), "",
                     f"(S − F) / {instr:,.0f} instructions"])
        rows.append(["ns per host call", fmt(ns_per_call, 0), "", f"(K − F) / {2 * CLOCK_CALLS}"])
        rows.append(["ns per buffer read", fmt(ns_per_read, 0), "",
                     f"(R − F) / {2 * BUFFER_READS} (a host call that calls back into malloc)"])
        rows.append(["predicted C − G", fmt(predicted_code + predicted_calls, 2), "",
                     f"{get_p1['fuel_total']:,.0f} instructions → {predicted_code:.2f} µs, "
                     f"{reads:g} buffer reads and {others:g} other host calls → "
                     f"{predicted_calls:.2f} µs"])
        if "C − G" in med and full:
            b = median([v["B"] for v in full])
            notes.append(f"B spends {b:.1f} µs of Envoy CPU per request; the filter adds "
                         f"{med['C − B'] / b * 100:.1f}% (C − B), of which the floor of the "
                         f"paused-buffer technique {med['G − B'] / b * 100:.1f}% (G − B) and the "
                         f"filter's own work {med['C − G'] / b * 100:.1f}% (C − G; predicted "
                         f"from the deterministic counts: "
                         f"{(predicted_code + predicted_calls) / b * 100:.1f}%).")
    return rows, headers, notes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", type=Path, default=default_wasm_path(), help="the Wasm build")
    ap.add_argument("--native", type=Path, default=default_native_path(), help="the native build")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per configuration "
                    "(default 5; 1 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 1 round, 1/20 of the requests, short latency runs")
    ap.add_argument("--configs", default=ALL_CONFIGS,
                    help=f"subset of {' '.join(ALL_CONFIGS)} (default all)")
    ap.add_argument("--only", default="", help="only workloads whose name contains this "
                    "(e.g. '16B', 'P1 ')")
    ap.add_argument("--noop-wasm", type=Path,
                    default=REPO_ROOT / "target/noop/wasm32-unknown-unknown/release/noop_filter.wasm",
                    help="the no-op filter for F (make bench builds it)")
    ap.add_argument("--noop-native", type=Path,
                    default=REPO_ROOT / "target/noop-native/release/libnoop_native.so",
                    help="the no-op native filter for O (make bench builds it)")
    ap.add_argument("--latency-rate", type=float, default=1000.0, help="req/s (default 1000)")
    ap.add_argument("--latency-requests", type=int, default=None,
                    help="per configuration and round (default 3000; 300 with --quick)")
    ap.add_argument("--run-timeout", type=float, default=None,
                    help="seconds before a redis-benchmark run counts as hung (default 90; 30 "
                    "with --quick)")
    ap.add_argument("--skip-instructions", action="store_true",
                    help="do not run the wasmtime fuel count (tests/bench_instructions.rs)")
    ap.add_argument("--no-calibrate", action="store_true",
                    help="skip the calibration (cost of a wasm instruction and of a host call)")
    ap.add_argument("--calibration-rounds", type=int, default=None, help="default 7 (2 with --quick)")
    ap.add_argument("--instructions-only", action="store_true",
                    help="only the wasmtime fuel count, no processes")
    args = ap.parse_args()
    install_sigterm_handler()

    rounds = args.rounds or (1 if args.quick else 5)
    scale = 0.05 if args.quick else 1.0
    lat_requests = args.latency_requests or (300 if args.quick else 3000)
    run_timeout = args.run_timeout or (30.0 if args.quick else 90.0)
    keys = [k for k in ALL_CONFIGS if k in args.configs.upper()]
    if "B" not in keys and not args.instructions_only:
        keys.insert(1 if "A" in keys else 0, "B")  # every ratio is against B
    wl = [w for w in workloads(scale) if args.only in w.name]
    needs_wasm = any(k in keys for k in "CD") and not args.instructions_only
    if needs_wasm and not args.wasm.exists():
        print(f"error: {args.wasm} does not exist; run `make build` first", file=sys.stderr)
        return 2
    needs_native = "N" in keys and not args.instructions_only
    if needs_native and not args.native.exists():
        print(f"error: {args.native} does not exist; run `make build-native` first",
              file=sys.stderr)
        return 2
    if "O" in keys and not args.instructions_only and not args.noop_native.exists():
        print(f"error: {args.noop_native} does not exist; `make bench` builds it", file=sys.stderr)
        return 2
    if ("F" in keys or "G" in keys) and not args.instructions_only and not args.noop_wasm.exists():
        print(f"error: {args.noop_wasm} does not exist; `make bench` builds it", file=sys.stderr)
        return 2
    if not args.instructions_only and not Path(REDIS_BENCHMARK).exists():
        print(f"error: {REDIS_BENCHMARK} not found (Debian redis-tools; `make setup-apt`)",
              file=sys.stderr)
        return 2

    header = machine_facts(args.wasm if needs_wasm else None)
    if needs_native:
        header["native module"] = f"{args.native} sha256 {sha256_short(args.native)}"
    header["redis-benchmark"] = subprocess.run([REDIS_BENCHMARK, "--version"], capture_output=True,
                                               text=True).stdout.strip() if not args.instructions_only else "-"
    header["load average before"] = loadavg()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    method = [
        f"redis-benchmark, {CLIENTS} clients, -t set|get, -P 1|16, -d 16|102400; requests per run: "
        + ", ".join(f"{w.name} {w.requests:,}" for w in wl if w.op == "SET") + ".",
        "Configurations: " + "; ".join(f"{k} {CONFIGS[k]}" for k in keys) + "."
        + (f" D's plugin configuration: {json.dumps(FREQUENT)}." if "D" in keys else ""),
        "Every Envoy: --concurrency 1 (one worker), log level info, same redis-server; nothing "
        "pinned (on 2 cores, pinning Envoy alone would squeeze Redis and redis-benchmark onto one "
        "core and make the client the bottleneck).",
        f"{rounds} recorded round(s) after one unrecorded warm-up pass; in every round each "
        "workload runs on each configuration back to back. Medians over rounds; spread is min–max; "
        "'vs B' ratios are taken per round against B's run of the same workload in that round, "
        "then their median.",
        "Envoy µs/req: utime+stime of the Envoy process (all threads) from /proc/<pid>/stat, "
        "before and after the run, divided by the requests (10 ms clock-tick resolution; runs "
        "take 0.3 s or more of Envoy CPU). Redis µs/req the same for redis-server.",
        f"Latency: one connection, GET of a 16 B value, paced at {args.latency_rate:g} req/s on "
        f"an absolute schedule with one request outstanding, {lat_requests:,} per configuration "
        "and round; latency = send() to the complete reply, in Python (includes some 10–30 µs of "
        "client overhead, the same for every configuration). 'late sends' counts requests sent "
        "more than one interval behind schedule (the previous one took that long).",
        "Instructions: wasmtime fuel (≈ wasm instructions) under the test host "
        "(tests/bench_instructions.rs): deterministic, independent of machine load.",
    ]

    instr_rows: List[dict] = []
    tables: Dict[str, Tuple[list, list]] = {}
    if not args.skip_instructions:
        instr_rows, test_wasm_sha = run_instruction_count(args.noop_wasm)
        header["instruction count module"] = f"target/wasm-for-tests/… sha256 {test_wasm_sha}"
        req_rows, req_h, ka_rows, ka_h = instruction_tables(instr_rows)
        tables["Wasm instructions per request (fuel, default configuration, data callbacks only)"] = (req_rows, req_h)
        tables["Wasm instructions per keepalive (fuel; keepalive_interval 1s, tick 100 ms)"] = (ka_rows, ka_h)
        print()
        print(text_table(req_rows, req_h))
        print()
        print(text_table(ka_rows, ka_h))
        print()
    if args.instructions_only:
        paths = write_outputs(stamp, header, method, [], [], [], tables, instr_rows, {})
        say("wrote " + ", ".join(str(p.relative_to(REPO_ROOT)) for p in paths))
        return 0

    runs: List[Run] = []
    calibration_runs: List[Run] = []
    lat: List[Latency] = []
    guard_deltas: Dict[str, Dict[str, float]] = {}
    try:
        redis = RedisServer(name="redis-bench").start()
        redis.direct().set(LATENCY_KEY, LATENCY_VALUE)
        targets: Dict[str, Target] = {}
        for k in keys:
            if k == "A":
                targets[k] = Target(k, redis.port, None)
                continue
            if k == "B":
                envoy = EnvoyProxy(redis.address, name="envoy-B-tcp-proxy")
            elif k == "F":
                envoy = EnvoyProxy(redis.address, module=args.noop_wasm, plugin_config=None,
                                   name="envoy-F-noop-wasm")
            elif k == "G":
                # Any configuration switches the no-op filter to pause+continue.
                envoy = EnvoyProxy(redis.address, module=args.noop_wasm,
                                   plugin_config="pause", name="envoy-G-noop-pause")
            elif k == "C":
                envoy = EnvoyProxy(redis.address, module=args.wasm, plugin_config=None,
                                   name="envoy-C-guard")
            elif k == "O":
                envoy = EnvoyProxy(redis.address,
                                   module=FilterModule(args.noop_native, bootstrap=False),
                                   plugin_config=None, name="envoy-O-noop-native")
            elif k == "N":
                envoy = EnvoyProxy(redis.address, module=args.native, plugin_config=None,
                                   name="envoy-N-guard-native")
            elif k == "D":
                envoy = EnvoyProxy(redis.address, module=args.wasm, plugin_config=FREQUENT,
                                   name="envoy-D-guard-frequent")
            else:
                envoy = RedisProxyEnvoy(redis.address, name="envoy-E-redis-proxy")
            envoy.start()
            targets[k] = Target(k, envoy.listener_port, envoy)
        say("started: " + ", ".join(f"{k}=:{t.port}" for k, t in targets.items())
            + f" (Redis :{redis.port})")

        say("warm-up pass (not recorded)")
        warm = [Workload(w.op, w.pipeline, w.size, max(CLIENTS * w.pipeline * 2, w.requests // 10))
                for w in wl]
        for w in warm:
            for k in keys:
                measure(targets[k], redis, w, 0, run_timeout)
        for k in keys:
            latency_run(targets[k].port, args.latency_rate, min(200, lat_requests))

        before = guard_snapshot(targets)
        for rnd in range(1, rounds + 1):
            say(f"round {rnd}/{rounds} (load {loadavg()})")
            for w in wl:
                line = []
                for k in keys:
                    r = measure(targets[k], redis, w, rnd, run_timeout)
                    runs.append(r)
                    if not r.ok:
                        line.append(f"{k} FAILED")
                        continue
                    line.append(f"{k} {r.rps / 1000:.1f}k"
                                + (f"/{r.envoy_us_per_req:.1f}µs" if r.envoy_cpu_s is not None else ""))
                say(f"  {w.name:<14} " + "  ".join(line))
            for k in keys:
                samples, late = latency_run(targets[k].port, args.latency_rate, lat_requests)
                lat.append(Latency(rnd, k, samples, late))
            say("  latency p50/p99 µs: " + "  ".join(
                f"{x.config} {percentile(x.samples_us, 50):.0f}/{percentile(x.samples_us, 99):.0f}"
                for x in lat if x.round == rnd))
        if not args.no_calibrate and all(k in targets for k in "BFGC"):
            cal_rounds = args.calibration_rounds or (2 if args.quick else 7)
            calibration_runs = calibrate(targets, redis, args, cal_rounds, scale, run_timeout)
        after = guard_snapshot(targets)
        for k in after:
            guard_deltas[k] = {n: after[k].get(n, 0) - before.get(k, {}).get(n, 0)
                               for n in after[k]
                               if isinstance(after[k].get(n), (int, float))}
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all()
    header["load average after"] = loadavg()

    if calibration_runs:
        c_rows, c_headers, c_notes = calibration_table(calibration_runs, instr_rows)
        tables["Calibration: what a wasm instruction and a host call cost (GET P1 16 B)"] = \
            (c_rows, c_headers)
        method.append("Calibration: " + " ".join(c_notes))
    summary = summarize(runs, wl, keys)
    t_rows, t_headers = throughput_table(summary)
    l_rows, l_headers = latency_table(lat, keys, args.latency_rate)
    tables = {
        f"Throughput and Envoy CPU per request ({rounds} rounds)": (t_rows, t_headers),
        f"Latency at {args.latency_rate:g} req/s, one connection, GET 16 B": (l_rows, l_headers),
        **tables,
    }
    print()
    for k in keys:
        print(f"  {k}  {CONFIGS[k]}")
    print()
    print(text_table(t_rows, t_headers))
    print()
    print(f"Latency at {args.latency_rate:g} req/s (one connection, GET 16 B, send→reply in Python):")
    print(text_table(l_rows, l_headers))
    for k, d in guard_deltas.items():
        changed = ", ".join(f"{n} +{v:g}" for n, v in sorted(d.items()) if v)
        print(f"filter stats {k} over the recorded runs: {changed or 'no change'}")
    failed = [r for r in runs if not r.ok]
    for r in failed:
        print(f"FAILED run: round {r.round} {r.workload.name} on {r.config}: {r.error}")
    passthrough = {k: d.get("passthrough", 0) for k, d in guard_deltas.items()}
    if any(passthrough.values()):
        print(f"WARNING: the filter passed connections through during the runs: {passthrough}")
    if calibration_runs:
        print()
        print("Calibration (GET P1 16 B):")
        print(text_table(c_rows, c_headers))
        for note in c_notes:
            print("  " + note)
    print(f"load average before: {header['load average before']}, after: {header['load average after']}")
    paths = write_outputs(stamp, header, method, runs, summary, lat, tables, instr_rows, guard_deltas)
    say("wrote " + ", ".join(str(p.relative_to(REPO_ROOT)) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
