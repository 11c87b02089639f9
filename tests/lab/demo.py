#!/usr/bin/env python3
"""redis-idle-guard demo: the same idle-connection incident through Envoy, without and with the
filter, side by side.

    .venv/bin/python tests/lab/demo.py --module target/wasm32-unknown-unknown/release/redis_idle_guard.wasm

Starts a redis-server with `timeout 2` (it closes connections idle for more than 2 s), one
Envoy with plain tcp_proxy and one with the filter in front of tcp_proxy (keepalive 1s), runs
a redis.asyncio client (RESP3, retries off, one connection) through each: N rounds of
"idle 3 s, then SET + GET", prints a before/after table and the filter's stats, and stops
everything it started (also on Ctrl-C). Loopback only.

It also draws the run (tests/lab/plot.py, if matplotlib is installed): per client, its commands
(ok / error), the filter's keepalive PINGs as Redis's MONITOR shows them, and its connections
as Redis's CLIENT LIST shows them, in .lab/demo.png (the data in .lab/demo-timeline.json).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == _HERE:
    sys.path.pop(0)  # run as a script: import the lab as a package, not its modules one by one
sys.path.insert(0, str(_HERE.parent))

from lab import EnvoyProxy, IncidentResult, LabError, RedisServer, run_incident  # noqa: E402
from lab.clients import incident_key  # noqa: E402
from lab.procs import install_sigterm_handler, lab_dir, live_processes, stop_all  # noqa: E402
from lab.plot import Command, Connection, Timeline, timelines_to_json  # noqa: E402
from lab.redis_watch import RedisWatch, SeenClient  # noqa: E402

REDIS_TIMEOUT = 2
KEY = "demo"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fmt_ms(v) -> str:
    return "n/a" if v is None else f"{v:.2f} ms"


def table(rows, headers) -> str:
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [line, " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)), line]
    out += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    out.append(line)
    return "\n".join(out)


def build_timelines(results: Sequence[IncidentResult], seen: Sequence[SeenClient],
                    titles: Dict[str, str]) -> List[Timeline]:
    """One timeline per client run, in seconds since the first warm-up: its commands as the
    client saw them, and the connections (and their PINGs) that carried its key at Redis."""
    t0 = min(r.warmup_at for r in results)
    out = []
    for r in results:
        key = incident_key(KEY, r.label, r.protocol)
        mine = [c for c in seen if any(key in cmd.args for cmd in c.commands)]
        t = Timeline(titles.get(r.label, r.label))
        t.commands = [Command(r.warmup_at - t0, True, warmup=True)]
        t.commands += [Command(x.at - t0, x.ok, x.error or "") for x in r.rounds]
        # The filter is the only sender of PING here: redis-py's health checks are off.
        t.keepalives = sorted(cmd.at - t0 for c in mine for cmd in c.commands
                              if cmd.name == "PING")
        t.connections = [Connection(c.opened - t0, None if c.closed is None else c.closed - t0)
                         for c in mine]
        out.append(t)
    return out


def draw(timelines: Sequence[Timeline], title: str, note: str) -> List[Path]:
    """.lab/demo-timeline.json, and .lab/demo.png when matplotlib is there."""
    base = lab_dir().parent
    data = base / "demo-timeline.json"
    data.write_text(timelines_to_json(timelines, title, note))
    try:
        from lab.plot import plot_demo
        return [data, plot_demo(timelines, base / "demo.png", title=title, note=note)]
    except ImportError as exc:
        say(f"no picture ({exc}): `make setup-py` installs matplotlib")
        return [data]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", required=True, type=Path,
                    help="the built filter: the .wasm or the native .so")
    ap.add_argument("--rounds", type=int, default=5, help="idle→command rounds (default 5)")
    ap.add_argument("--idle", type=float, default=3.0, help="idle seconds per round (default 3)")
    ap.add_argument("--protocol", type=int, choices=(2, 3), default=3)
    ap.add_argument("--keepalive", default="1s", help="filter keepalive_interval (default 1s)")
    args = ap.parse_args()
    if not args.module.exists():
        print(f"error: {args.module} does not exist; run `make build` (or `make build-native`)"
              " first", file=sys.stderr)
        return 2
    install_sigterm_handler()
    t_start = time.monotonic()
    guard_config = {"keepalive_interval": args.keepalive, "ping_timeout": "5s"}

    try:
        say(f"starting redis-server with `timeout {REDIS_TIMEOUT}` "
            f"(closes connections idle > {REDIS_TIMEOUT} s)")
        with RedisServer(timeout=REDIS_TIMEOUT, name="demo-redis") as redis:
            say(f"  redis-server on {redis.host}:{redis.port}")
            say("starting Envoy WITHOUT the filter (listener → tcp_proxy → redis)")
            with EnvoyProxy(redis, name="demo-envoy-plain") as plain:
                say(f"  plain Envoy listening on 127.0.0.1:{plain.listener_port}")
                say(f"starting Envoy WITH redis-idle-guard {guard_config} (listener → filter → "
                    "tcp_proxy → redis)")
                with EnvoyProxy(redis, module=args.module, plugin_config=guard_config,
                                name="demo-envoy-guard") as guard:
                    say(f"  guarded Envoy listening on 127.0.0.1:{guard.listener_port}")
                    say(f"running the client through both at once: redis.asyncio RESP"
                        f"{args.protocol}, retries off, one connection; {args.rounds} rounds of "
                        f"idle {args.idle:g} s → SET + GET (~{args.rounds * args.idle:.0f} s)")

                    def progress(label, r):
                        status = "ok   " if r.ok else "ERROR"
                        detail = "" if r.ok else f"  {r.error}"
                        say(f"  [{label:>14}] round {r.round}/{args.rounds}: {status} "
                            f"first command {r.first_command_s * 1000:7.2f} ms{detail}")

                    cx = r"^tcp\.redis\.downstream_cx_total$"
                    cx0 = [sum(e.stats(cx).values()) for e in (plain, guard)]

                    async def both():
                        return await asyncio.gather(
                            run_incident(plain.address, rounds=args.rounds, idle_s=args.idle,
                                         protocol=args.protocol, label="without filter",
                                         key=KEY, progress=progress),
                            run_incident(guard.address, rounds=args.rounds, idle_s=args.idle,
                                         protocol=args.protocol, label="with filter",
                                         key=KEY, progress=progress))

                    direct = redis.direct()
                    redis_version = direct.info("server")["redis_version"]
                    direct.close()
                    with RedisWatch(redis.address) as watch:
                        before, after = asyncio.run(both())
                        time.sleep(3 * watch.poll_s)  # the clients' last closes reach the poll
                    stats = guard.guard_stats()
                    prom = [line for line in guard.prometheus_text().splitlines()
                            if line.startswith("redis_idle_guard_") and "_bucket" not in line]
                    opened = [sum(e.stats(cx).values()) - c0
                              for e, c0 in zip((plain, guard), cx0)]

                    say("stopping Envoys and redis-server")
    except KeyboardInterrupt:
        print()
        say("interrupted: stopping everything the demo started")
        stop_all()
        return 130
    except LabError as exc:
        say(f"lab error: {exc}")
        log = getattr(exc, "log", "")
        if log:
            print("\n".join(log.splitlines()[-20:]))
        return 1

    def example(res):
        return res.errors[0].error if res.errors else "-"

    print()
    print(f"Redis `timeout {REDIS_TIMEOUT}`, client idle {args.idle:g} s between commands, "
          f"RESP{args.protocol}, retries off")
    print(table([
        ["rounds", len(before.rounds), len(after.rounds)],
        ["errors", len(before.errors), len(after.errors)],
        ["example error", example(before), example(after)],
        ["p50 first command after idle (ok rounds)", fmt_ms(before.p50_ok_ms()),
         fmt_ms(after.p50_ok_ms())],
        ["p50 time to the error", fmt_ms(before.p50_error_ms()), fmt_ms(after.p50_error_ms())],
        ["client connections opened", opened[0], opened[1]],
    ], ["", "without filter", "with redis-idle-guard"]))
    if before.errors:
        print("Without the filter the client reconnects on the command after each error, and the "
              "next idle spell kills that connection too.")
    print()
    print("redis-idle-guard stats (admin /stats, <namespace>.redis_idle_guard.*):")
    for name in sorted(stats):
        print(f"  {name:<24} {stats[name]}")
    print("as Prometheus sees them (/stats/prometheus):")
    for line in prom:
        print(f"  {line}")
    print()
    titles = {"without filter": "without the filter (Envoy tcp_proxy)",
              "with filter": f"with redis-idle-guard (keepalive_interval {args.keepalive})"}
    title = (f"The incident: Redis `timeout {REDIS_TIMEOUT}` closes connections idle > "
             f"{REDIS_TIMEOUT} s; the client idles {args.idle:g} s between commands")
    note = (f"{time.strftime('%Y-%m-%d')}, tests/lab/demo.py: redis-server {redis_version}, "
            f"Envoy 1.40, redis.asyncio RESP{args.protocol}, one connection, retries off. "
            "Commands and errors as the client saw them; keepalive PINGs from Redis's MONITOR; "
            f"connections from Redis's CLIENT LIST every {watch.poll_s * 1000:.0f} ms.")
    timelines = build_timelines([before, after], watch.clients, titles)
    pings = len(timelines[1].keepalives)
    say(f"keepalive PINGs seen by Redis: {pings} (filter's keepalive.sent: "
        f"{stats.get('keepalive.sent', 'n/a')})")
    for path in draw(timelines, title, note):
        say(f"wrote {path}")
    left = live_processes()
    say(f"done in {time.monotonic() - t_start:.1f} s; processes left running: {len(left)}; "
        f"logs in {lab_dir()}")
    return 0 if not after.errors else 1


if __name__ == "__main__":
    sys.exit(main())
