"""Reconnect storms: many idle guarded connections, a Redis stall longer than `ping_timeout`, and
a pool that reconnects each connection the moment it is closed.

The filter closes an idle connection whose PING goes unanswered for `ping_timeout` (the
reconnect signal). When Redis stalls, every idle connection that PINGs during the stall is
closed, and if they all PINGed in the same tick (they went quiet together: a burst of traffic
that ended, a pool opened at once, the reconnects after the last stall), they are all closed at
once and all reconnect at once. This module measures that, as a client sees it:

- `open_pool` opens the connections (each sends one GET, so Envoy holds a read buffer for the
  filter's PINGs), `burst` sends one more GET on every one of them in one sweep (they go quiet
  together);
- `Pool.run` drives every connection from one epoll loop: a connection that reads EOF is
  reconnected at once (a new connection to Envoy, `PING`, until `+PONG`); it freezes Redis
  (SIGSTOP) and thaws it (SIGCONT) at the given times;
- `Sampler` reads, every 100 ms, Envoy's counters (the filter's reconnect signals, the listener's
  and the cluster's connections, connect timeouts), Redis's listen queue (`ss`), the kernel's
  listen overflows and, while Redis runs, its `total_connections_received`.

Times are `time.monotonic()`; a close's time is when the epoll loop saw it (the loop records the
time once per poll, so a burst of closes is not smeared by the loop's own work).
"""

from __future__ import annotations

import errno
import re
import select
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .envoy_proxy import EnvoyProxy
from .procs import LabError
from .redis_server import RedisServer

GET = b"*2\r\n$3\r\nGET\r\n$13\r\nbench:storm:k\r\n"
NIL = b"$-1\r\n"
PING = b"*1\r\n$4\r\nPING\r\n"
PONG = b"+PONG\r\n"
BUCKET = 0.1  # the timeline's resolution: closes per 100 ms

# Envoy's default circuit breaker allows 1,024 connections to a cluster.
CLUSTER = {"circuit_breakers": {"thresholds": [{"max_connections": 1_000_000,
                                                "max_pending_requests": 1_000_000}]}}

_READ = select.EPOLLIN | select.EPOLLRDHUP


def open_pool(port: int, n: int, batch: int = 250, timeout: float = 30.0) -> List[socket.socket]:
    """n connections to Envoy on `port`, each having sent one GET and read its reply ($-1)."""
    socks: List[socket.socket] = []
    try:
        while len(socks) < n:
            group = []
            for _ in range(min(batch, n - len(socks))):
                s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                s.sendall(GET)
                group.append(s)
                socks.append(s)
            for s in group:
                _read_exactly(s, NIL)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def _read_exactly(s: socket.socket, want: bytes) -> None:
    buf = b""
    while len(buf) < len(want):
        chunk = s.recv(len(want) - len(buf))
        if not chunk:
            raise LabError("a connection closed before its reply")
        buf += chunk
    if buf != want:
        raise LabError(f"unexpected reply {buf!r}")


def burst(socks: Sequence[socket.socket]) -> float:
    """One GET on every connection, then every reply: they all go quiet within the sweep.
    Returns the sweep's duration in seconds (sending to the last reply)."""
    t0 = time.monotonic()
    for s in socks:
        s.sendall(GET)
    for s in socks:
        _read_exactly(s, NIL)
    return time.monotonic() - t0


@dataclass
class Slot:
    """One connection of the pool, reconnected whenever it is closed."""
    sock: socket.socket
    state: str = "idle"  # idle (proven, quiet) | connecting | waiting (PING sent)
    buf: bytes = b""


@dataclass
class Stall:
    """What one stall did to the pool. All times are time.monotonic()."""
    frozen_at: float
    thawed_at: float
    connections: int
    closes: List[float] = field(default_factory=list)      # an idle connection read EOF
    attempts: List[float] = field(default_factory=list)    # a reconnect began (Envoy's listener)
    refused: int = 0                                       # a reconnect closed before its PONG
    ready: List[float] = field(default_factory=list)       # a reconnect got its PONG
    stray: int = 0                                         # bytes an idle connection read
    samples: List[Tuple[float, Dict[str, float]]] = field(default_factory=list)
    ended_at: float = 0.0

    @property
    def recovered(self) -> bool:
        """Every connection that was closed has a working one again."""
        return len(self.ready) == len(self.closes)

    def recovery_s(self) -> Optional[float]:
        """From the thaw until the last pool slot had a working connection again."""
        if not self.closes or not self.recovered:
            return None
        return max(0.0, max(self.ready) - self.thawed_at)

    def buckets(self, times: Sequence[float], start: float, end: float) -> List[int]:
        """Counts per BUCKET from `start` to `end` (relative to the freeze)."""
        n = max(1, int(round((end - start) / BUCKET)))
        out = [0] * n
        for t in times:
            i = int((t - self.frozen_at - start) // BUCKET)
            if 0 <= i < n:
                out[i] += 1
        return out

    def busiest_share(self) -> float:
        """The largest share of the closes that fell in one BUCKET (any alignment of the
        bucket: the window slides over the sorted close times)."""
        ts = sorted(self.closes)
        if not ts:
            return 0.0
        best, j = 0, 0
        for i, t in enumerate(ts):
            while ts[j] <= t - BUCKET:
                j += 1
            best = max(best, i - j + 1)
        return best / len(ts)

    def counter_deltas(self, name: str) -> List[Tuple[float, float, float]]:
        """(time relative to the freeze, seconds since the previous sample, increase since it)
        of a sampled counter."""
        out = []
        prev: Optional[Tuple[float, float]] = None
        for t, values in self.samples:
            v = values.get(name)
            if v is None:
                continue
            if prev is not None:
                out.append((t - self.frozen_at, t - prev[0], v - prev[1]))
            prev = (t, v)
        return out

    def counter_increase(self, name: str) -> Optional[float]:
        vals = [v[name] for _, v in self.samples if name in v]
        return (vals[-1] - vals[0]) if len(vals) >= 2 else None

    def peak_rate(self, name: str) -> Optional[float]:
        """The largest increase of a counter between two consecutive samples, per second
        (None if it was never sampled twice in a row: Redis's is not read while it is
        frozen)."""
        best = None
        for _, dt, d in self.counter_deltas(name):
            if 0 < dt <= 3 * BUCKET:
                best = d / dt if best is None else max(best, d / dt)
        return best

    def sampled_max(self, name: str) -> Optional[float]:
        vals = [v[name] for _, v in self.samples if name in v]
        return max(vals) if vals else None


class Pool:
    """Every connection of a pool in one epoll loop: an EOF on an idle connection is a close
    (the reconnect signal) and is answered at once with a new connection, `PING`, `+PONG`."""

    def __init__(self, port: int, socks: Sequence[socket.socket]):
        self.address = ("127.0.0.1", port)
        self.epoll = select.epoll()
        self.slots: Dict[int, Slot] = {}
        for s in socks:
            s.setblocking(False)
            self._watch(Slot(s), _READ)

    def __len__(self) -> int:
        return len(self.slots)

    def _watch(self, slot: Slot, events: int) -> None:
        self.slots[slot.sock.fileno()] = slot
        self.epoll.register(slot.sock.fileno(), events)

    def _drop(self, slot: Slot) -> None:
        fd = slot.sock.fileno()
        self.slots.pop(fd, None)
        try:
            self.epoll.unregister(fd)
        except OSError:
            pass
        slot.sock.close()

    def _reconnect(self, slot: Slot, now: float, stall: Stall) -> None:
        self._drop(slot)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(self.address)
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise LabError(f"connect to Envoy failed: {errno.errorcode.get(err, err)}")
        stall.attempts.append(now)
        self._watch(Slot(s, "connecting"), select.EPOLLOUT)

    def _on_event(self, slot: Slot, events: int, now: float, stall: Stall) -> None:
        if slot.state == "connecting":
            if slot.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                stall.refused += 1
                self._reconnect(slot, now, stall)
                return
            slot.sock.send(PING)
            slot.state = "waiting"
            self.epoll.modify(slot.sock.fileno(), _READ)
            return
        try:
            data = slot.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if slot.state == "idle":
            if data:
                stall.stray += len(data)
                return
            stall.closes.append(now)
            self._reconnect(slot, now, stall)
            return
        # waiting for the PONG of a reconnect
        if not data:
            stall.refused += 1  # Envoy gave up on Redis (connect timeout) and closed it
            self._reconnect(slot, now, stall)
            return
        slot.buf += data
        if slot.buf.startswith(PONG):
            slot.buf = b""
            slot.state = "idle"
            stall.ready.append(now)
        elif len(slot.buf) >= len(PONG):
            raise LabError(f"unexpected reply to PING: {slot.buf[:64]!r}")

    def run(self, redis: RedisServer, *, freeze_at: float, stall_s: float, end_by: float,
            sampler: Optional["Sampler"] = None) -> Stall:
        """Drive the pool until every closed connection is back after the thaw (at least 1 s
        after it), or until `end_by`; freeze Redis at `freeze_at` for `stall_s`."""
        stall = Stall(frozen_at=freeze_at, thawed_at=freeze_at + stall_s, connections=len(self))
        if sampler is not None:
            sampler.samples = stall.samples
        frozen = thawed = False
        now = time.monotonic()
        while now < end_by:
            if not frozen and now >= freeze_at:
                redis.freeze()
                stall.frozen_at, frozen = now, True
                stall.thawed_at = now + stall_s
            if frozen and not thawed and now >= stall.thawed_at:
                redis.unfreeze()
                stall.thawed_at, thawed = now, True
            if thawed and stall.recovered and now >= stall.thawed_at + 1.0:
                break
            nxt = stall.thawed_at if frozen and not thawed else (freeze_at if not frozen else end_by)
            timeout = max(0.0, min(0.05, nxt - now))
            events = self.epoll.poll(timeout, max(64, len(self.slots)))
            now = time.monotonic()
            for fd, ev in events:
                slot = self.slots.get(fd)
                if slot is not None:
                    self._on_event(slot, ev, now, stall)
        if frozen and not thawed:
            redis.unfreeze()
        stall.ended_at = time.monotonic()
        return stall

    def close(self) -> None:
        for slot in list(self.slots.values()):
            self._drop(slot)
        self.epoll.close()


def _netstat_listen() -> Dict[str, float]:
    """The kernel's TcpExt ListenOverflows and ListenDrops (this network namespace)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            d = dict(zip(names.split()[1:], values.split()[1:]))
            return {"kernel.listen_overflows": float(d.get("ListenOverflows", 0)),
                    "kernel.listen_drops": float(d.get("ListenDrops", 0))}
    return {}


def _listen_queue(port: int) -> Dict[str, float]:
    """Redis's accept queue: connections the kernel accepted that Redis has not (`ss` Recv-Q)."""
    try:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=2).stdout.split()
        return {"redis.listen_queue": float(out[1])} if len(out) > 2 else {}
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


class Sampler(threading.Thread):
    """Every `period` seconds, a dict of counters and gauges (see the module doc)."""

    def __init__(self, envoy: EnvoyProxy, redis: RedisServer, period: float = BUCKET):
        super().__init__(daemon=True, name="storm-sampler")
        self.envoy, self.redis, self.period = envoy, redis, period
        self.samples: List[Tuple[float, Dict[str, float]]] = []
        self._stop_event = threading.Event()
        self._info: Optional[socket.socket] = None
        prefix = re.escape(envoy.module.stats_prefix if envoy.module is not None else "")
        self._regex = (rf"^({prefix}redis_idle_guard\.(reconnect_signals|keepalive\.(sent|failed))"
                       r"|cluster\.redis\.upstream_cx_(total|connect_timeout|connect_fail|active)"
                       r"|listener\.127\.0\.0\.1_\d+\.downstream_cx_total)$")

    def run(self) -> None:
        while not self._stop_event.wait(self.period):
            t = time.monotonic()
            try:
                self.samples.append((t, self.sample()))
            except (OSError, LabError, ValueError):
                pass

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)
        if self._info is not None:
            self._info.close()

    def sample(self) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for name, value in self.envoy.stats(self._regex).items():
            short = re.sub(r"^(wasmcustom|dynamicmodulescustom)\.", "", name)
            short = re.sub(r"^listener\.[^.]+_\d+\.", "listener.", short)
            out[short] = float(value)
        out.update(_listen_queue(self.redis.port))
        out.update(_netstat_listen())
        accepted = self._redis_accepted()
        if accepted is not None:
            out["redis.connections_received"] = accepted
        return out

    def _redis_accepted(self) -> Optional[float]:
        """INFO stats total_connections_received, unless Redis is frozen."""
        if self.redis.process is None or self.redis.process.frozen:
            return None
        try:
            if self._info is None:
                self._info = socket.create_connection(self.redis.address, timeout=0.3)
            self._info.sendall(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n")
            buf = b""
            while True:
                chunk = self._info.recv(65536)
                if not chunk:
                    raise OSError("closed")
                buf += chunk
                m = re.match(rb"\$(\d+)\r\n", buf)
                if m and len(buf) >= m.end() + int(m.group(1)) + 2:
                    break
            m = re.search(rb"total_connections_received:(\d+)", buf)
            return float(m.group(1)) if m else None
        except OSError:
            if self._info is not None:
                self._info.close()
            self._info = None
            return None

