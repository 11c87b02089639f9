#!/usr/bin/env python3
"""The idle-death matrix: which idle-connection faults reach the application, through which
Envoy chain, for which client.

    .venv/bin/python tests/lab/matrix.py --short --module $WASM   # what `make demo` runs (~1 min)
    .venv/bin/python tests/lab/matrix.py --module $WASM           # the full matrix (~2.5 min)
    .venv/bin/python tests/lab/matrix.py --defaults 30 --module $WASM   # the defaults (~7 min)

`--defaults C` checks the filter's default configuration instead of a tuned one: the path's
cutoff is C seconds (NAT silent drop, NAT reset, Redis `timeout`), the idle spell 1.5 C, and the
filter runs its defaults scaled by C / 30 (C = 30: the plain defaults, `{}`); `make test` runs it
with C = 3.

Faults (tests/lab/faults.py): (a) NAT forgets idle flows, silent drop; (b) same, TCP reset;
(c) Redis `timeout`; (d) Redis restarted while idle; (e) black hole from mid-idle; (f) slow
Redis (answers late, inside the filter's ping_timeout; a control that must not bite); and (g)
Redis restarted while idle with its FINs lost (a host crash: the old connections learn it from a
RST to their next packet), the case of (d) that Envoy cannot relay by itself.
Chains: Envoy tcp_proxy alone; + cluster tcp_keepalive; + tcp_proxy idle_timeout shorter than
the idle spell; + redis-idle-guard. Clients: redis-py asyncio RESP3 and RESP2, redis-py sync,
ioredis (node), all with retries off.

One round, for every (chain, client) at once against the same fault: a fresh connection, SET +
GET, idle `--idle` seconds (the fault is armed mid-idle where it starts then), SET: its error
and latency are the cell's data. All chains and clients of a fault run side by side (each on its
own connections; every fault acts per flow, or on the whole Redis for all alike), so the full
matrix costs about `rounds × (idle + command timeout)` per fault.

Prints a table per fault, flags every (fault, client) where the fault did NOT bite the bare
tcp_proxy chain (there a clean filter column proves nothing), checks the filter's claims
(`--strict`: exit 1 when one fails, when a cell did not bite and is not in the printed list
EXPECT_NO_BITE, VACUOUS, or when a fault bit no client at all), and writes
.lab/matrix-<short|full>.md and .csv, and the .csv drawn as a grid in .png (tests/lab/plot.py,
if matplotlib is installed). Stops everything it started, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import csv
import io
import json
import os
import re
import shutil
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

_HERE = Path(__file__).resolve().parent
if __name__ == "__main__":
    if sys.path and Path(sys.path[0]).resolve() == _HERE:
        sys.path.pop(0)  # run as a script: import the lab as a package
    sys.path.insert(0, str(_HERE.parent))

import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from redis.backoff import NoBackoff  # noqa: E402
from redis.maint_notifications import MaintNotificationsConfig  # noqa: E402
from redis.retry import Retry  # noqa: E402

from lab.clients import make_async_client  # noqa: E402
from lab.demo import table  # noqa: E402
from lab.envoy_proxy import EnvoyProxy  # noqa: E402
from lab.module import default_wasm_path  # noqa: E402
from lab.plot import plot_matrix, read_matrix_csv  # noqa: E402 (matplotlib: on first use)
from lab.faults import (Fault, NatTimeout, SlowRedis, make_fault,  # noqa: E402
                        sysctls_are_per_netns)
from lab.procs import (REPO_ROOT, LabError, ManagedProcess, install_sigterm_handler,  # noqa: E402
                       live_processes, stop_all, unique_workdir)

NODE_DIR = _HERE / "node"
NODE_SCRIPT = NODE_DIR / "idle_round.js"
FAULT_KEYS = "abcdefg"


# -- what is measured ----------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    rounds: int
    idle_s: float = 4.0            # the idle spell; above every fault's cutoff
    cutoff_s: int = 2              # NAT conntrack timeout and Redis `timeout`
    stall_s: float = 1.2           # (f): each Redis stall; below ping_timeout
    command_timeout_s: float = 2.0  # the clients' socket/command timeout
    keepalive: str = "1s"          # filter keepalive_interval (below the cutoff)
    ping_timeout: str = "2s"       # filter ping_timeout (above stall_s)
    tcp_idle_timeout: str = "1.5s"  # chain 3: tcp_proxy idle_timeout (below the cutoff)
    tcp_keepalive: Tuple[int, int, int] = (1, 1, 2)  # chain 2: time, interval, probes (s, s, n)
    lead_s: float = 1.0            # from a round's start to its first command (node start-up)
    spread_s: float = 0.2          # first commands of the sessions are spread over this
    # The filter's configuration, instead of keepalive/ping_timeout above (--defaults).
    guard_config: Optional[Tuple[Tuple[str, str], ...]] = None
    guard_label: str = ""


# The filter's defaults (src/config.rs): they cover every cutoff of 30 s or more.
DEFAULTS_CUTOFF_S = 30
DEFAULTS = (("keepalive_interval", 15.0), ("ping_timeout", 5.0), ("probe_after", 25.0))


def scaled_defaults(cutoff_s: float) -> Tuple[Tuple[str, str], ...]:
    """The defaults for a path whose cutoff is `cutoff_s` instead of 30 s (all times scaled
    alike); the plain defaults, `{}`, at 30 s."""
    if cutoff_s == DEFAULTS_CUTOFF_S:
        return ()
    k = cutoff_s / DEFAULTS_CUTOFF_S
    return tuple((name, f"{round(v * k * 1000)}ms") for name, v in DEFAULTS)


@dataclass(frozen=True)
class Chain:
    key: str
    label: str
    envoy_kwargs: Callable[[Settings, Path], Dict[str, Any]]


def _chains() -> List[Chain]:
    return [
        Chain("tcp_proxy", "tcp_proxy", lambda s, w: {}),
        Chain("tcp_keepalive", "tcp_proxy + cluster tcp_keepalive", lambda s, w: {
            "cluster_options": {"upstream_connection_options": {"tcp_keepalive": {
                "keepalive_time": s.tcp_keepalive[0], "keepalive_interval": s.tcp_keepalive[1],
                "keepalive_probes": s.tcp_keepalive[2]}}}}),
        Chain("idle_timeout", "tcp_proxy idle_timeout", lambda s, w: {
            "idle_timeout": s.tcp_idle_timeout}),
        Chain("guard", "tcp_proxy + redis-idle-guard", lambda s, w: {
            "module": w, "plugin_config": (
                dict(s.guard_config) if s.guard_config is not None else
                {"keepalive_interval": s.keepalive, "ping_timeout": s.ping_timeout})}),
    ]


CHAINS = _chains()


def chain_title(chain: Chain, s: Settings) -> str:
    """A short column head with the chain's timings."""
    if chain.key == "tcp_keepalive":
        t, i, n = s.tcp_keepalive
        return f"+tcp_keepalive {t}s/{i}s×{n}"
    if chain.key == "idle_timeout":
        return f"+idle_timeout {s.tcp_idle_timeout}"
    if chain.key == "guard":
        if s.guard_config is not None:
            return f"+redis-idle-guard {s.guard_label}"
        return f"+redis-idle-guard {s.keepalive}/{s.ping_timeout}"
    return chain.label


@dataclass(frozen=True)
class ClientSpec:
    key: str
    label: str
    kind: str                 # "py-async", "py-sync", "node"
    protocol: int = 3
    single: bool = False      # redis-py single_connection_client
    reconnect: bool = True    # node: reconnect after a close (ioredis retryStrategy)
    maint_off: bool = False   # redis-py RESP3: maintenance notifications off (see below)
    # Does this client open a new connection, before its next command, when its idle one was
    # closed (a FIN)? redis-py: its pool's checkout check, which RESP3 skips while maintenance
    # notifications are on (8.1's default) and which sees a FIN but not a RST in asyncio;
    # ioredis: retryStrategy. Only such a client can profit from a reconnect signal.
    reconnects_on_close: bool = False


CLIENTS = [
    ClientSpec("py-async-resp3", "redis-py asyncio RESP3 pool", "py-async", 3),
    ClientSpec("py-async-resp3-nomaint", "redis-py asyncio RESP3 pool, maint. notif. off",
               "py-async", 3, maint_off=True, reconnects_on_close=True),
    ClientSpec("py-async-resp2", "redis-py asyncio RESP2 pool", "py-async", 2,
               reconnects_on_close=True),
    ClientSpec("py-sync", "redis-py sync pool (RESP3)", "py-sync", 3, reconnects_on_close=True),
    ClientSpec("node-ioredis", "ioredis 6 (RESP3)", "node", 3, reconnects_on_close=True),
]
EXTRA_CLIENTS = [
    ClientSpec("py-async-resp3-single", "redis-py asyncio RESP3 single connection", "py-async", 3,
               single=True),
    ClientSpec("node-ioredis-noreconnect", "ioredis 6, retryStrategy null", "node", 3,
               reconnect=False),
]


@dataclass
class Outcome:
    """One session: the first command after the idle spell."""
    ok: bool
    error: Optional[str]
    latency_ms: Optional[float]
    verified: bool = False
    harness_error: Optional[str] = None  # failed before the measured command: not a data point
    events: List[Any] = field(default_factory=list)  # node: [event, seconds since round start]


@dataclass
class Cell:
    fault: str
    chain: str
    client: str
    outcomes: List[Outcome] = field(default_factory=list)

    @property
    def measured(self) -> List[Outcome]:
        return [o for o in self.outcomes if o.harness_error is None]

    @property
    def errors(self) -> List[Outcome]:
        return [o for o in self.measured if not o.ok]

    @property
    def harness_errors(self) -> List[str]:
        return [o.harness_error for o in self.outcomes if o.harness_error]

    def error_texts(self) -> Counter:
        return Counter(o.error for o in self.errors)

    def p50_ms(self) -> Optional[float]:
        xs = [o.latency_ms for o in self.measured if o.latency_ms is not None]
        return statistics.median(xs) if xs else None

    def max_ms(self) -> Optional[float]:
        xs = [o.latency_ms for o in self.measured if o.latency_ms is not None]
        return max(xs) if xs else None


def short_error(text: str) -> str:
    t = text.lower()
    if "timeout" in t or "timed out" in t:
        return "timeout"
    if "closed by server" in t or "connection is closed" in t:
        return "closed"
    if "reset" in t:
        return "reset"
    if "writeable" in t:
        return "not-connected"
    if "max retries" in t:
        return "closed(max-retries)"
    return text[:24]


def fmt_ms(v: Optional[float]) -> str:
    if v is None:
        return "n/a"
    return f"{v:.0f}ms" if v >= 100 else f"{v:.1f}ms"


def cell_text(cell: Cell) -> str:
    n = len(cell.measured)
    if n == 0:
        return "harness error"
    kinds = sorted({short_error(e) for e in cell.error_texts()})
    text = f"{len(cell.errors)}/{n}"
    if kinds:
        text += " " + ",".join(kinds)
    return f"{text} {fmt_ms(cell.p50_ms())}"


# -- one session per client kind -----------------------------------------------------------
async def _sleep_until(epoch: float) -> None:
    delay = epoch - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _err(exc: BaseException) -> str:
    # Envoy's listener port differs per chain: keep error texts comparable across cells.
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", f"{type(exc).__name__}: {exc}")


async def py_async_session(spec: ClientSpec, address: Tuple[str, int], key: str, start: float,
                           s: Settings) -> Outcome:
    extra: Dict[str, Any] = {}
    if spec.maint_off:
        extra["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    client = make_async_client(address, protocol=spec.protocol,
                               single_connection_client=spec.single,
                               socket_timeout=s.command_timeout_s, **extra)
    out = Outcome(False, None, None)
    try:
        await _sleep_until(start)
        await client.set(key, "warmup")
        if await client.get(key) != b"warmup":
            raise LabError("warm-up GET mismatch")
        await _sleep_until(start + s.idle_s)
        t0 = time.perf_counter()
        try:
            await client.set(key, "after-idle")
            out.ok = True
        except (aioredis.RedisError, OSError, asyncio.TimeoutError) as exc:
            out.error = _err(exc)
        out.latency_ms = (time.perf_counter() - t0) * 1000
        if out.ok:
            try:
                out.verified = await client.get(key) == b"after-idle"
            except (aioredis.RedisError, OSError, asyncio.TimeoutError):
                pass
    except Exception as exc:  # noqa: BLE001 - before the measured command: a harness problem
        if out.latency_ms is None:
            out.harness_error = _err(exc)
    finally:
        try:
            await client.aclose()
        except Exception:  # noqa: BLE001
            pass
    return out


def make_sync_client(address: Tuple[str, int], *, protocol: int,
                     socket_timeout: float) -> redis.Redis:
    """redis-py sync client (a ConnectionPool) with every retry off."""
    host, port = address
    return redis.Redis(host=host, port=port, protocol=protocol, retry=Retry(NoBackoff(), 0),
                       retry_on_error=[], socket_timeout=socket_timeout,
                       socket_connect_timeout=5, health_check_interval=0)


def py_sync_session(spec: ClientSpec, address: Tuple[str, int], key: str, start: float,
                    s: Settings) -> Outcome:
    client = make_sync_client(address, protocol=spec.protocol, socket_timeout=s.command_timeout_s)
    out = Outcome(False, None, None)
    try:
        time.sleep(max(0.0, start - time.time()))
        client.set(key, "warmup")
        if client.get(key) != b"warmup":
            raise LabError("warm-up GET mismatch")
        time.sleep(max(0.0, start + s.idle_s - time.time()))
        t0 = time.perf_counter()
        try:
            client.set(key, "after-idle")
            out.ok = True
        except (redis.RedisError, OSError) as exc:
            out.error = _err(exc)
        out.latency_ms = (time.perf_counter() - t0) * 1000
        if out.ok:
            try:
                out.verified = client.get(key) == b"after-idle"
            except (redis.RedisError, OSError):
                pass
    except Exception as exc:  # noqa: BLE001
        if out.latency_ms is None:
            out.harness_error = _err(exc)
    finally:
        try:
            client.close()
        except Exception:  # noqa: BLE001
            pass
    return out


def node_binary() -> str:
    path = shutil.which("node")
    if path is None:
        raise LabError("node not found (Node 20+ is needed for the ioredis client)")
    if not (NODE_DIR / "node_modules" / "ioredis").exists():
        raise LabError(f"ioredis is not installed: run `npm ci --prefix {NODE_DIR}`")
    return path


async def node_session(spec: ClientSpec, address: Tuple[str, int], key: str, start: float,
                       s: Settings, round_start: float) -> Outcome:
    args = {"host": address[0], "port": address[1], "startAt": int(round_start * 1000),
            "offset": start - round_start, "idle": s.idle_s,
            "commandTimeoutMs": int(s.command_timeout_s * 1000), "reconnect": spec.reconnect,
            "protocol": spec.protocol, "key": key}
    workdir = unique_workdir("node")
    proc = ManagedProcess(f"node:{key}", [node_binary(), str(NODE_SCRIPT), json.dumps(args)],
                          workdir / "node.log", cwd=NODE_DIR).start()
    try:
        deadline = start + s.idle_s + 3 * s.command_timeout_s + 10
        while proc.alive() and time.time() < deadline:
            await asyncio.sleep(0.05)
        if proc.alive():
            return Outcome(False, None, None, harness_error="node client did not finish")
        lines = [ln for ln in proc.log_text().splitlines() if ln.startswith("{")]
        if not lines:
            return Outcome(False, None, None,
                           harness_error=f"node client printed no result: {proc.log_text()[-300:]}")
        r = json.loads(lines[-1])
        out = Outcome(bool(r["ok"]), r.get("error"), r.get("latency_ms"), bool(r.get("verified")),
                      events=r.get("events", []))
        if r.get("phase") != "after-idle" and not r["ok"]:
            out.harness_error = f"{r.get('phase')}: {r.get('error')}"
        return out
    finally:
        proc.stop()


# -- one fault ------------------------------------------------------------------------------
@dataclass
class FaultRun:
    fault: Fault
    cells: Dict[Tuple[str, str], Cell]
    guard_stats: Dict[str, Any] = field(default_factory=dict)
    envoy_stats: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def one_round(fault: Fault, sessions: Sequence[Tuple[Tuple[str, int], ClientSpec, str]],
                    s: Settings, pool: concurrent.futures.Executor,
                    on_armed: Optional[Callable[[], None]] = None) -> List[Outcome]:
    """One round for every (address, client, key) at once against `fault`: warm up, idle,
    the fault is armed `fault.arm_at_s` into the idle spell (after every warm-up), the first
    command after the spell is measured; then the fault is disarmed. Raises if arm() fails.
    on_armed runs (in a thread) right after arm(), e.g. for a test's own probe."""
    loop = asyncio.get_running_loop()
    round_start = time.time() + s.lead_s
    tasks = []
    for i, (address, spec, key) in enumerate(sessions):
        start = round_start + s.spread_s * i / max(1, len(sessions) - 1)
        if spec.kind == "py-async":
            tasks.append(py_async_session(spec, address, key, start, s))
        elif spec.kind == "py-sync":
            tasks.append(loop.run_in_executor(pool, py_sync_session, spec, address, key, start, s))
        else:
            tasks.append(node_session(spec, address, key, start, s, round_start))

    async def arm() -> None:
        if fault.arm_at_s is None:
            return
        # after every session's warm-up (they start within spread_s and take milliseconds)
        await _sleep_until(round_start + s.spread_s + 0.1 + fault.arm_at_s)
        await loop.run_in_executor(pool, fault.arm)
        if on_armed is not None:
            await loop.run_in_executor(pool, on_armed)

    try:
        results = await asyncio.gather(arm(), *tasks, return_exceptions=True)
    finally:
        if fault.armed:
            await loop.run_in_executor(pool, fault.disarm)
    if isinstance(results[0], BaseException):
        raise LabError(f"arm() of fault ({fault.key}) failed: {results[0]!r}") from results[0]
    return [Outcome(False, None, None, harness_error=_err(r)) if isinstance(r, BaseException)
            else r for r in results[1:]]


async def run_round(fault: Fault, envoys: Dict[str, EnvoyProxy], clients: Sequence[ClientSpec],
                    s: Settings, rnd: int, pool: concurrent.futures.Executor,
                    run: FaultRun) -> None:
    pairs = [(c, cl) for c in envoys for cl in clients]
    sessions = [(envoys[c].address, cl, f"m:{fault.key}:{c}:{cl.key}:{rnd}") for c, cl in pairs]
    for (chain_key, spec), res in zip(pairs, await one_round(fault, sessions, s, pool)):
        run.cells[(chain_key, spec.key)].outcomes.append(res)
    if isinstance(fault, SlowRedis):
        run.notes.append(f"round {rnd}: Redis stalled {fault.stalls} times so far")


def run_fault(fault: Fault, clients: Sequence[ClientSpec], s: Settings, module: Path) -> FaultRun:
    t0 = time.monotonic()
    run = FaultRun(fault, {(c.key, cl.key): Cell(fault.key, c.key, cl.key)
                           for c in CHAINS for cl in clients})
    n_sync = sum(1 for cl in clients if cl.kind == "py-sync") * len(CHAINS)
    with fault, concurrent.futures.ThreadPoolExecutor(max_workers=n_sync + 2) as pool:
        envoys: Dict[str, EnvoyProxy] = {}
        try:
            for c in CHAINS:
                envoys[c.key] = EnvoyProxy(fault.address, name=f"m{fault.key}-{c.key}",
                                           **c.envoy_kwargs(s, module)).start()
            for rnd in range(1, s.rounds + 1):
                say(f"  ({fault.key}) round {rnd}/{s.rounds}: {len(CHAINS)} chains × "
                    f"{len(clients)} clients, idle {s.idle_s:g}s")
                asyncio.run(run_round(fault, envoys, clients, s, rnd, pool, run))
            run.guard_stats = envoys["guard"].guard_stats()
            for key, e in envoys.items():
                run.envoy_stats[key] = e.stats(r"^tcp\.redis\.(idle_timeout|downstream_cx_total)$")
        finally:
            for e in envoys.values():
                e.stop()
    run.seconds = time.monotonic() - t0
    return run


# -- verdicts and output ---------------------------------------------------------------------
EXPECT_CLEAN = set("abcf")  # with the filter: zero app-visible errors for every client
STRICT_FAILS = ("FAIL", "VACUOUS", "ERROR")  # the verdicts that make --strict exit 1
# (d)(e)(g): the filter closes the dead idle connection (or relays Redis's close): a reconnect
# signal, after which a client that reconnects on close succeeds.


# (fault, client) cells where the fault is NOT expected to bite plain tcp_proxy, and why. Any
# other cell that does not bite is VACUOUS (its filter column proves nothing) and fails
# --strict; a listed cell that bites after all is reported (its reason is stale).
RECONNECTING = ("py-async-resp3-nomaint", "py-async-resp2", "py-sync", "node-ioredis")
EVERY_CLIENT = tuple(c.key for c in CLIENTS + EXTRA_CLIENTS)
EXPECT_NO_BITE: Dict[str, Tuple[Tuple[str, ...], str]] = {
    "c": (RECONNECTING, "Redis's `timeout` FIN reaches the client through Envoy, and this client "
                        "reconnects on a close before its next command"),
    "d": (RECONNECTING, "the restarted Redis's FIN reaches the client through Envoy, and this "
                        "client reconnects on a close before its next command"),
    "f": (EVERY_CLIENT, "a control: Redis is slow but alive, within every timeout"),
}


def no_bite_reason(fault: str, client: str) -> Optional[str]:
    """Why the fault is declared not to bite this client through tcp_proxy alone, or None."""
    clients, why = EXPECT_NO_BITE.get(fault, ((), ""))
    return why if client in clients else None


def declared_lines(faults: str, clients: Sequence[ClientSpec]) -> List[str]:
    """The declared no-bite cells of this run, one line each, for the output."""
    return [f"({k}) {c.label}: {no_bite_reason(k, c.key)}" for k in faults for c in clients
            if no_bite_reason(k, c.key)]


def bites(run: FaultRun, client: str) -> bool:
    return bool(run.cells[("tcp_proxy", client)].errors)


def bite_problems(run: FaultRun, clients: Sequence[ClientSpec]) -> Tuple[List[str], List[str]]:
    """(what fails --strict, what is only reported) about where the fault bit tcp_proxy alone:
    a fault that should bite must bite at least one client; a declared cell that bit is stale."""
    k = run.fault.key
    fails, reports = [], []
    if run.fault.expect_bite and not any(bites(run, c.key) for c in clients):
        fails.append(f"({k}) bit no client through tcp_proxy alone: the fault is not real here")
    for c in clients:
        if bites(run, c.key) and no_bite_reason(k, c.key):
            reports.append(f"({k}) {c.label}: declared not to bite, but bit tcp_proxy alone "
                           f"({dict(run.cells[('tcp_proxy', c.key)].error_texts())})")
    return fails, reports


def claim_verdict(run: FaultRun, spec: ClientSpec) -> Tuple[str, str]:
    """(verdict, why) for the filter column of one (fault, client)."""
    cell = run.cells[("guard", spec.key)]
    if not cell.measured:
        return "ERROR", "no measurement (harness error)"
    k = run.fault.key
    errs = len(cell.errors)
    signals = run.guard_stats.get("reconnect_signals", 0)
    if k in EXPECT_CLEAN:
        if errs:
            return "FAIL", f"{errs} error(s) with the filter: {dict(cell.error_texts())}"
        if k == "f" and signals:
            return "FAIL", f"the filter closed {signals} connection(s) of a slow but live Redis"
        if k == "f":
            return "PASS", "0 errors and no reconnect signal for a slow but live Redis"
        if not bites(run, spec.key):
            return _no_bite(k, spec, "0 errors with the filter")
        return "PASS", "0 errors with the filter"
    # (d), (e), (g): a reconnect signal while idle; clients that reconnect on close carry on.
    why = f"reconnect_signals={signals}"
    if not spec.reconnects_on_close:
        return "N/A", f"client does not reconnect on close ({errs} error(s)); {why}"
    if errs:
        kinds = {short_error(e) for e in cell.error_texts()}
        if kinds == {"reset"}:
            why += ("; the close reached the client as a RST (Envoy relays an upstream reset "
                    "as a reset), which this client's checkout check does not notice")
        return "FAIL", f"{errs} error(s) although the client reconnects on close; {why}"
    if not signals:
        return "FAIL", "no reconnect signal from the filter"
    if not bites(run, spec.key):
        return _no_bite(k, spec, f"0 errors; {why}")
    return "PASS", f"0 errors; {why}"


def _no_bite(fault: str, spec: ClientSpec, why: str) -> Tuple[str, str]:
    """The verdict of a clean filter column where the fault did not bite tcp_proxy alone."""
    reason = no_bite_reason(fault, spec.key)
    if reason:
        return "NO-BITE", f"{why}; declared not to bite tcp_proxy alone (see the list above)"
    return "VACUOUS", f"the fault did not bite tcp_proxy alone, and is not declared not to; {why}"


def node_close_times(run: FaultRun, chain: str, spec: ClientSpec) -> List[float]:
    """When the node client saw its first connection close, in seconds after its warm-up."""
    out = []
    for o in run.cells[(chain, spec.key)].measured:
        closes = [e[1] for e in o.events if e[0] == "close"]
        readies = [e[1] for e in o.events if e[0] == "ready"]
        if closes and readies:
            out.append(closes[0] - readies[0])
    return out


def render(runs: List[FaultRun], clients: Sequence[ClientSpec], s: Settings, mode: str,
           module: Path, seconds: float) -> Tuple[str, str, List[List[Any]], bool, bool]:
    """(text for stdout, markdown, csv rows, every claim holds, no harness error)."""
    text, md = io.StringIO(), io.StringIO()
    heads = ["client"] + [chain_title(c, s) for c in CHAINS]
    ok_all = True
    harness_ok = True
    settings_line = (f"mode {mode}; {s.rounds} round(s) per cell; idle {s.idle_s:g}s; cutoffs "
                     f"{s.cutoff_s}s; client timeouts {s.command_timeout_s:g}s; retries off; "
                     f"module {module}")
    text.write(f"Idle-death matrix ({settings_line})\n")
    text.write("cell = errors/rounds on the first command after the idle spell, error kinds, "
               "p50 latency of that command (to its reply or its error)\n")
    md.write("# Idle-death matrix\n\n")
    md.write(f"{settings_line}.\n\nCell: errors/rounds on the first command after the idle "
             "spell, error kinds, p50 latency of that command (to its reply or its error). "
             "**NO BITE**: the fault did not reach this client through tcp_proxy alone, so the "
             "other columns prove nothing for it.\n\n")
    csv_rows: List[List[Any]] = [["fault", "fault_title", "chain", "client", "rounds", "errors",
                                  "error_texts", "latency_p50_ms", "latency_max_ms",
                                  "bites_tcp_proxy_alone", "claim", "claim_why", "harness_errors"]]
    flags: List[str] = []
    bite_notes: List[str] = []
    claims: List[Tuple[str, str, str, str]] = []
    declared = declared_lines("".join(r.fault.key for r in runs), clients)
    text.write("Declared not to bite tcp_proxy alone (--strict fails on any other cell that "
               "does not bite):\n")
    md.write("Declared not to bite tcp_proxy alone (`--strict` fails on any other cell that "
             "does not bite):\n\n")
    for line in declared or ["(none in this run)"]:
        text.write(f"  - {line}\n")
        md.write(f"- {line}\n")
    md.write("\n")
    for run in runs:
        f = run.fault
        rows = []
        for spec in clients:
            row = [spec.label]
            for c in CHAINS:
                t = cell_text(run.cells[(c.key, spec.key)])
                if c.key == "tcp_proxy" and not bites(run, spec.key):
                    t += " NO BITE"
                row.append(t)
            rows.append(row)
            if not bites(run, spec.key):
                flags.append(f"({f.key}) {spec.label}: the fault did not bite tcp_proxy alone"
                             + (" (declared)" if no_bite_reason(f.key, spec.key) else ""))
            verdict, why = claim_verdict(run, spec)
            claims.append((f.key, spec.label, verdict, why))
            if verdict in STRICT_FAILS:
                ok_all = False
            for c in CHAINS:
                cell = run.cells[(c.key, spec.key)]
                csv_rows.append([
                    f.key, f.describe(), c.key, spec.key, len(cell.measured), len(cell.errors),
                    " | ".join(f"{n}× {t}" for t, n in cell.error_texts().items()),
                    None if cell.p50_ms() is None else round(cell.p50_ms(), 2),
                    None if cell.max_ms() is None else round(cell.max_ms(), 2),
                    "yes" if bites(run, spec.key) else "no",
                    verdict if c.key == "guard" else "", why if c.key == "guard" else "",
                    " | ".join(cell.harness_errors)])
        fails, reports = bite_problems(run, clients)
        ok_all = ok_all and not fails
        bite_notes += fails + reports
        title = f"({f.key}) {f.describe()}"
        text.write(f"\n{title}   [{run.seconds:.0f}s]\n{table(rows, heads)}\n")
        md.write(f"## {title}\n\n{_md_table(rows, heads)}\n")
        g = run.guard_stats
        gline = ("filter: " + ", ".join(f"{k}={g.get(k, 0)}" for k in (
            "keepalive.sent", "keepalive.answered", "keepalive.failed", "reconnect_signals",
            "passthrough")))
        idle_closes = run.envoy_stats.get("idle_timeout", {}).get("tcp.redis.idle_timeout", 0)
        gline += f"; tcp_proxy idle_timeout closes (chain 3): {idle_closes}"
        text.write(gline + "\n")
        md.write(f"{gline}\n\n")
        node = next((c for c in clients if c.kind == "node" and c.reconnect), None)
        if node and f.key not in EXPECT_CLEAN:
            parts = []
            for c in CHAINS:
                ts = node_close_times(run, c.key, node)
                if ts:
                    parts.append(f"{c.key} {statistics.median(ts):.2f}s")
            if parts:
                line = ("ioredis saw its idle connection closed (s after warm-up, median): "
                        + ", ".join(parts))
                text.write(line + "\n")
                md.write(line + "\n\n")
        for note in run.notes:
            text.write(f"note: {note}\n")
            md.write(f"note: {note}\n\n")
        errors = Counter()
        for cell in run.cells.values():
            for t, n in cell.error_texts().items():
                errors[(cell.chain, t)] += n
        if errors:
            md.write("Errors seen (chain: count × text):\n\n")
            for (chain, t), n in sorted(errors.items()):
                md.write(f"- {chain}: {n}× `{t}`\n")
            md.write("\n")
        harness = [(k, h) for k, cell in run.cells.items() for h in cell.harness_errors]
        for (chain, client), h in harness:
            harness_ok = False
            text.write(f"HARNESS ERROR {chain}/{client}: {h}\n")
            md.write(f"HARNESS ERROR {chain}/{client}: {h}\n\n")
    text.write("\nError texts (all chains):\n")
    all_texts = Counter()
    for run in runs:
        for cell in run.cells.values():
            all_texts.update(cell.error_texts())
    for t, n in all_texts.most_common():
        text.write(f"  {n:3d}× {t}\n")
    text.write("\nNot bitten through tcp_proxy alone (the filter column proves nothing there):\n")
    md.write("## Not bitten through tcp_proxy alone\n\n")
    for fl in flags or ["(none)"]:
        text.write(f"  - {fl}\n")
        md.write(f"- {fl}\n")
    if bite_notes:
        head = ("Bite checks (a fault that bit no client fails --strict; a declared cell that "
                "bit is only reported)")
        text.write(f"\n{head}:\n")
        md.write(f"\n## {head}\n\n")
        for note in bite_notes:
            text.write(f"  - {note}\n")
            md.write(f"- {note}\n")
    text.write("\nClaims for the filter column: (a)(b)(c)(f) zero errors for every client; "
               "(d)(e)(g) a reconnect signal while idle, so a client that reconnects on close "
               "succeeds\n")
    md.write("\n## Claims for the filter column\n\n(a)(b)(c)(f): zero app-visible errors for "
             "every client. (d)(e)(g): the filter closes the dead idle connection (reconnect "
             "signal), so a client that reconnects on close succeeds on its next command.\n\n"
             "| fault | client | verdict | why |\n|---|---|---|---|\n")
    for key, label, verdict, why in claims:
        text.write(f"  ({key}) {label:<48} {verdict:<8} {why}\n")
        md.write(f"| ({key}) | {label} | {verdict} | {why} |\n")
    text.write(f"\nmatrix run time {seconds:.0f}s\n")
    md.write(f"\nRun time {seconds:.0f} s.\n")
    return text.getvalue(), md.getvalue(), csv_rows, ok_all, harness_ok


def _md_table(rows: List[List[str]], heads: List[str]) -> str:
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def draw(csv_path: Path, s: Settings, clients: Sequence[ClientSpec], mode: str, module: Path,
         seconds: float) -> Optional[Path]:
    """The .csv just written, as a picture beside it (None without matplotlib)."""
    note = (f"{time.strftime('%Y-%m-%d')}, tests/lab/matrix.py, mode {mode}: {s.rounds} round(s) "
            f"per cell; idle {s.idle_s:g} s; cutoffs {s.cutoff_s} s; client timeouts "
            f"{s.command_timeout_s:g} s; retries off; {module.name}; {seconds:.0f} s.")
    try:
        return plot_matrix(
            read_matrix_csv(csv_path), csv_path.with_suffix(".png"),
            title="Idle-death matrix: errors on the first command after an idle spell, "
                  "per fault, Envoy chain and client",
            note=note, chain_titles={c.key: chain_title(c, s) for c in CHAINS},
            client_titles={c.key: c.label for c in clients}, kind=short_error)
    except ImportError as exc:
        say(f"no picture ({exc}): `make setup-py` installs matplotlib")
        return None


def preflight(s: Settings) -> List[str]:
    """Kernel facts the faults rely on, measured: per-netns conntrack sysctls, and a router
    that really forgets an idle flow after the cutoff (and not before)."""
    facts = []
    with NatTimeout("drop", s.cutoff_s) as f:
        for key in ("net.netfilter.nf_conntrack_tcp_timeout_established",
                    "net.netfilter.nf_conntrack_tcp_loose"):
            per = sysctls_are_per_netns(f.topology, key)
            facts.append(f"{key} is {'per network namespace' if per else 'GLOBAL'}")
            if not per:
                raise LabError(f"{key} is not per network namespace on this kernel")
        before = f.measure_forget(s.cutoff_s - 0.5)
        after = f.measure_forget(s.cutoff_s + 0.5)
        facts.append(f"router conntrack after {before['idle_s']:g}s idle: entry="
                     f"{before['conntrack_entry']}, next packet: {before['outcome']}; after "
                     f"{after['idle_s']:g}s: entry={after['conntrack_entry']}, next packet: "
                     f"{after['outcome']}")
        if before["outcome"] != "reply" or after["outcome"] != "silence":
            raise LabError("the NAT fault does not forget flows as configured: " + facts[-1])
    return facts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true",
                    help="one round, the four main clients (what `make demo` runs)")
    ap.add_argument("--module", type=Path, default=None,
                    help="the built filter: the .wasm (default) or the native .so")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per cell (short 1, full 3)")
    ap.add_argument("--faults", default=FAULT_KEYS, help="which faults, e.g. 'ace' (default all)")
    ap.add_argument("--idle", type=float, default=4.0, help="idle spell in seconds (default 4)")
    ap.add_argument("--out", type=Path, default=None, help="directory for the .md/.csv files")
    ap.add_argument("--defaults", type=float, default=None, metavar="CUTOFF",
                    help="check the filter's defaults (scaled by CUTOFF/30) against cutoffs of "
                         "CUTOFF seconds (faults a, b, c; idle 1.5 × CUTOFF)")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 if a claim for the filter column fails or is VACUOUS (the "
                         "fault did not bite tcp_proxy alone in a cell not declared in "
                         "EXPECT_NO_BITE), or a fault bit no client (default: report only; a "
                         "harness error always exits 1)")
    args = ap.parse_args()
    module = args.module or default_wasm_path()
    if not module.exists():
        print(f"error: {module} does not exist; run `make build` (or `make build-native`) first",
              file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("error: the fault lab needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    mode = "short" if args.short else "full"
    clients = list(CLIENTS) + ([] if args.short else list(EXTRA_CLIENTS))
    s = Settings(rounds=args.rounds or (1 if args.short else 3), idle_s=args.idle)
    fault_keys = args.faults
    if args.defaults is not None:
        c = args.defaults
        config = scaled_defaults(c)
        label = ("defaults" if not config else
                 "defaults ×" + f"{c / DEFAULTS_CUTOFF_S:g} " + "/".join(v for _, v in config))
        # The clients' timeout stays short: a command that hangs is an error either way.
        if c != int(c) or c < 1:
            print("error: --defaults takes a whole number of seconds (a conntrack timeout)",
                  file=sys.stderr)
            return 2
        s = Settings(rounds=s.rounds, idle_s=1.5 * c, cutoff_s=int(c),
                     tcp_idle_timeout=f"{c / 2:g}s", guard_config=config, guard_label=label)
        fault_keys = "abc" if args.faults == FAULT_KEYS else args.faults
        mode = f"defaults-{c:g}s-{mode}"
    faults = [make_fault(k, s.cutoff_s, s.stall_s) for k in fault_keys]
    out_dir = args.out or Path(os.environ.get("LAB_DIR", REPO_ROOT / ".lab"))
    install_sigterm_handler()
    t_start = time.monotonic()
    runs: List[FaultRun] = []
    try:
        node_binary()
        if not args.short:
            say("preflight: measuring the kernel facts the faults rely on")
            for fact in preflight(s):
                say(f"  {fact}")
        for fault in faults:
            say(f"fault ({fault.key}) {fault.describe()}")
            runs.append(run_fault(fault, clients, s, module))
    except KeyboardInterrupt:
        print()
        say("interrupted: stopping everything the matrix started")
        stop_all()
        return 130
    except LabError as exc:
        say(f"lab error: {exc}")
        log = getattr(exc, "log", "")
        if log:
            print("\n".join(log.splitlines()[-20:]))
        return 1
    seconds = time.monotonic() - t_start
    text, md, rows, ok_all, harness_ok = render(runs, clients, s, mode, module, seconds)
    print()
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"matrix-{mode}.md").write_text(md)
    with open(out_dir / f"matrix-{mode}.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    png = draw(out_dir / f"matrix-{mode}.csv", s, clients, mode, module, seconds)
    left = live_processes()
    say(f"wrote {out_dir / f'matrix-{mode}.md'} and .csv" + (f", {png}" if png else "")
        + f"; processes left running: {len(left)}")
    if not harness_ok:
        return 1
    return 1 if args.strict and not ok_all else 0


if __name__ == "__main__":
    sys.exit(main())
