#!/usr/bin/env python3
"""The soak: minutes of verified traffic, connection churn and scheduled faults through the real
Envoy (2 workers) with the filter, beside a plain Envoy as the control.

    .venv/bin/python tests/lab/soak.py --seconds 600 --module target/release/libredis_idle_guard.so
    make soak SOAK_SECONDS=600      # both builds; `make test` runs 60 s of each (tests/e2e)

One long-lived fault-lab path (tests/lab/faults.py: Envoy → router netns → Redis netns) carries
two Envoys, `--concurrency 2` each: plain tcp_proxy (the control) and redis-idle-guard in front
of tcp_proxy. The same clients, with the same seeds, run through both:
- pipeline clients (RESP2 and RESP3): batches of SET/GET/INCR/APPEND/... and MULTI/EXEC, sent
  split at random byte boundaries with pauses around the keepalive interval, with values and
  commands whose replies are the filter's own PING reply byte for byte (`PING redis-idle-guard`,
  GET of a value `redis-idle-guard`, a value that is the filter's PING); idle spells between;
- subscribers (RESP2, RESP3) with a publisher, and BLPOP clients (RESP2, RESP3) with a pusher;
- churners: thousands of connections opened, used, left idle, closed by the client (close, QUIT,
  half-close) or by the server (CLIENT KILL; Redis `timeout`).
Every reply, message and element is checked byte for byte against a model of what Redis must
answer; a byte the client did not ask for (say, a leaked keepalive reply) is a mismatch.

The run is a sequence of cycles. Each arms one fault for a few seconds (in turn: stalls shorter
than ping_timeout, NAT silent drop, Redis `timeout`, NAT reset, Redis restart, a black hole,
a stall longer than ping_timeout and than the clients' timeout), then a checkpoint: the fault
is disarmed, the churners finish, every long-lived client checks its connections and parks,
and the connections gauge, Envoy's own count, open FDs and the filter's memory are read with
exactly the long-lived connections open and idle. Sampled every second meanwhile: the filter's
memory (`vm_memory_bytes`), Envoy RSS and FDs, connections, keepalives, probes, reconnect
signals, passthrough.

Verdict (exit 1 on any failure):
- any byte mismatch, through either Envoy;
- an error through the filter, unless the fault armed at its time takes in-flight commands
  from every client, with the filter or without (Redis restart; black hole; the long stall),
  the error is of a kind that fault causes, and it came while the fault could still cause it
  (explained_for); the control's errors in the same cycles are reported beside;
- a connection closed under an idle client of the filter during a fault the filter must ride
  out (NAT drop or reset, Redis `timeout`, short stalls): a false reconnect signal;
- a fault that should bite but did not bite the control (then the run proves nothing);
- a checkpoint where the filter's connections gauge differs from Envoy's own count of client
  connections (or is below what the clients hold); a gauge, Envoy count or FD count that is
  not back to its start once every client has gone;
- filter memory that grows into a calm cycle (nothing held behind a PING) from the checkpoint
  before, or over all of them, beyond a tolerance (memory_verdict: a stall may set a high-water
  mark once, a leak grows in every cycle);
- passthrough, or a VM failure (panic, trap) in the filter's Envoy log.

Writes .lab/soak-<build>.md and .png (tests/lab/plot.py). Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import re
import socket
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

_HERE = Path(__file__).resolve().parent
if __name__ == "__main__":
    if sys.path and Path(sys.path[0]).resolve() == _HERE:
        sys.path.pop(0)  # run as a script: import the lab as a package
    sys.path.insert(0, str(_HERE.parent))

from lab.envoy_proxy import EnvoyProxy  # noqa: E402
from lab.faults import Fault, FaultError  # noqa: E402
from lab.module import FilterModule, default_wasm_path  # noqa: E402
from lab.procs import (REPO_ROOT, LabError, install_sigterm_handler, live_processes,  # noqa: E402
                       stop_all)
from lab.resp import Incomplete, ProtocolError, RawConnection, encode_command, parse_frame  # noqa: E402

CHAINS = ("plain", "guard")
CHAIN_TITLES = {"plain": "plain Envoy", "guard": "the filter"}

# The faults, in the order the cycles arm them.
FAULTS = ("short_stall", "nat_drop", "redis_timeout", "nat_reset", "restart", "black_hole",
          "long_stall")
FAULT_TITLES = {
    "short_stall": "Redis stalls shorter than ping_timeout",
    "nat_drop": "NAT forgets idle flows, drops silently",
    "redis_timeout": "Redis `timeout`",
    "nat_reset": "NAT forgets idle flows, answers with RST",
    "restart": "Redis restart",
    "black_hole": "black hole for established flows",
    "long_stall": "Redis stall longer than ping_timeout and the clients' timeout",
}
# Faults that take in-flight commands from every client, with the filter or without (a restart
# closes every connection; a black hole swallows them; a stall outlasts the client's timeout),
# and the error kinds each causes. Any other error through the filter fails the soak.
HITS_EVERY_CLIENT = {
    "restart": {"closed", "reset"},
    # A connection opened into the black hole: Envoy's connect_timeout (1 s) closes it, and a
    # client that wrote meanwhile reads a reset or an EOF, through any Envoy.
    "black_hole": {"timeout", "closed", "reset", "lost"},
    "long_stall": {"timeout", "closed", "lost"},
}
# The longest a client waits for one reply here: a BLPOP with no timeout and a push after up
# to 4 s, then the client's timeout (see Blocker).
LONGEST_BLOCK_S = 4.0
# Faults the filter rides out: no error, and no idle connection closed under a client.
RIDDEN_OUT = ("short_stall", "nat_drop", "nat_reset", "redis_timeout")
# Faults that must bite the control (errors, or idle connections closed) at least once per run.
MUST_BITE = ("nat_drop", "nat_reset", "redis_timeout", "restart", "black_hole")

TOKEN = b"redis-idle-guard"
FILTER_PING = encode_command("PING", "redis-idle-guard")
FILTER_REPLY = b"$16\r\nredis-idle-guard\r\n"
# Values whose replies look exactly like the filter's PING reply, or like its PING.
LOOKALIKES = (TOKEN, FILTER_REPLY, FILTER_PING, b"*2\r\n$4\r\npong\r\n$16\r\nredis-idle-guard\r\n",
              b"+PONG\r\n", b"PONG", b"")
INTEGER = re.compile(rb"0|-?[1-9]\d{0,14}")  # what INCR accepts (no leading zeros)
KEY_TTL_MS = 120_000  # every key the soak writes expires (Redis stays small over a long run)
FRESH_S = 60.0        # a key is read back only within this long of its SET (well inside the TTL)

VM_FAILURE = re.compile(r"panicked|Uncaught RuntimeError|Wasm VM failed|wasm trap|"
                        r"Function: proxy_on_\w+ failed|failed to load", re.IGNORECASE)

Expect = Union[bytes, "re.Pattern[bytes]"]


# -- settings ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    seconds: float = 600.0
    # Filter timers in seconds, not the defaults' tens of seconds, so that every fault acts
    # within one cycle: a keepalive after 1 s of quiet (every idle spell here, 1-6 s, has
    # some); ping_timeout 2 s: above the short stalls with a margin for this noisy machine,
    # below the long stall; probe_after 2 s: a command after 2 s without a byte from Redis
    # (mid-frame pauses, behind a BLPOP) is probed, so probes happen too.
    keepalive: str = "1s"
    ping_timeout: str = "2s"
    probe_after: str = "2s"
    cutoff_s: int = 3               # NAT conntrack timeout and Redis `timeout`, while armed
    short_stall_s: float = 0.8      # DEBUG SLEEP, back to back with stall_gap_s between
    stall_gap_s: float = 0.3
    long_stall_s: float = 4.5       # > ping_timeout and > client_timeout_s
    client_timeout_s: float = 3.0   # a client gives up after this long without a byte
    # tcp_proxy idle_timeout, both Envoys. A client that gives up on a dead flow closes with
    # a FIN; tcp_proxy then half-closes towards Redis and keeps the connection until Redis's
    # side closes too, which a dead flow never does: Envoy's idle_timeout (1 h by default)
    # ends it. Scaled like the rest; longer than any idle spell of a client here.
    envoy_idle_timeout_s: float = 20.0
    lead_s: float = 1.0             # a cycle: traffic, then the fault armed for armed_s,
    armed_s: float = 5.0            # then tail_s more traffic, then the checkpoint
    tail_s: float = 1.0
    pipelines: int = 6              # half RESP2, half RESP3
    churners: int = 6
    warmup_checkpoints: int = 2
    seed: int = 1

    def guard_config(self) -> Dict[str, str]:
        return {"keepalive_interval": self.keepalive, "ping_timeout": self.ping_timeout,
                "probe_after": self.probe_after}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the path: every fault on one long-lived topology --------------------------------------
ESTABLISHED = "net.netfilter.nf_conntrack_tcp_timeout_established"


class SoakPath(Fault):
    """One fault-lab path on which each soak fault is armed and disarmed in turn, with no
    conntrack dump (thousands of churned flows overrun its netlink buffer): the router has
    tcp_loose=0, a rule for INVALID packets (DROP, or a TCP reset while the NAT reset fault is
    armed), and black-hole generations: each new flow is marked with the current generation,
    and arming the black hole drops the current generation and starts the next. Redis allows
    DEBUG (the stalls)."""

    key = "s"
    title = "soak path"
    GENERATIONS = 3  # a generation is reused two black holes later, when its flows are long gone

    def __init__(self) -> None:
        super().__init__()
        self.established_s = "432000"
        self.generation = 1

    def redis_config(self) -> Dict[str, str]:
        return {"enable-debug-command": "yes"}

    def configure_router(self) -> None:
        t = self.topology
        t.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")
        self.established_s = t.read_sysctl(ESTABLISHED)
        t.iptables("-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
        t.iptables("-A", "FORWARD", "-m", "connmark", "--mark", "0", "-j", "DROP")
        t.iptables("-t", "mangle", "-A", "PREROUTING", "-m", "conntrack", "--ctstate", "NEW",
                   "-j", "CONNMARK", "--set-mark", str(self.generation))

    def _invalid_rule(self, reset: bool) -> None:
        target = ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"] if reset else \
            ["-j", "DROP"]
        self.topology.iptables("-R", "FORWARD", "1", "-m", "conntrack", "--ctstate", "INVALID",
                               *target)

    def nat_arm(self, cutoff_s: int, reset: bool) -> None:
        """Forget flows idle for cutoff_s: each flow gets the short timeout at its next packet
        (the kernel's rule), so a flow used after this and then left idle dies."""
        self._invalid_rule(reset)
        self.topology.sysctl(ESTABLISHED, str(cutoff_s))

    def nat_disarm(self) -> None:
        """Long timeouts again, for each flow at its next packet (a checkpoint's PING). Flows
        forgotten meanwhile stay dead: their packets are INVALID."""
        self.topology.sysctl(ESTABLISHED, self.established_s)
        self._invalid_rule(False)

    def black_hole(self) -> int:
        """Every flow that exists now is dropped both ways from now on; new ones are not.
        Returns how many established flows that caught (a count for the report)."""
        dead = self.generation
        self.generation = dead % self.GENERATIONS + 1
        t = self.topology
        t.iptables("-t", "mangle", "-R", "PREROUTING", "1", "-m", "conntrack", "--ctstate",
                   "NEW", "-j", "CONNMARK", "--set-mark", str(self.generation))
        t.iptables("-R", "FORWARD", "2", "-m", "connmark", "--mark", str(dead), "-j", "DROP")
        proc = t.nat("conntrack", "-L", "-p", "tcp", "--orig-dst", t.redis_addr, "--mark",
                     str(dead), "--state", "ESTABLISHED", check=False)
        return sum(1 for line in proc.stdout.splitlines() if line.startswith("tcp"))

    def redis_cli_argv(self, *args: str) -> List[str]:
        """redis-cli inside Redis's namespace: the admin path never crosses the faulty router."""
        return ["ip", "netns", "exec", self.topology.redis_ns, "redis-cli", "-h",
                self.topology.redis_addr, "-p", str(self.redis.port), *args]


# -- the wire: a client connection that sees every byte ------------------------------------
class WireError(Exception):
    """A command that did not get its reply: kind is closed, reset, timeout, lost (a message
    or element that never came), connect, or mismatch (bytes other than the expected ones)."""

    def __init__(self, kind: str, detail: str = "", partial: bytes = b""):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.partial = partial


class Conn(asyncio.Protocol):
    """One client connection: every byte received is kept until a reply claims it."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self._wake: Optional[asyncio.Future] = None
        self.opened = time.monotonic()
        self.last_rx = self.last_tx = self.opened
        self.port = 0  # the client's local port: finds the connection in Envoy's logs

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.port = sock.getsockname()[1]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.last_rx = time.monotonic()
        self._notify()

    def describe(self) -> str:
        now = time.monotonic()
        return (f"port {self.port}, open {now - self.opened:.1f}s, last byte in "
                f"{now - self.last_rx:.1f}s ago, out {now - self.last_tx:.1f}s ago")

    def eof_received(self) -> bool:
        self.eof = True
        self._notify()
        return False

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            self.reset = True
        self.eof = True
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    @property
    def open(self) -> bool:
        return not self.eof and self.transport is not None and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        if self.open:
            self.transport.write(data)
            self.last_tx = time.monotonic()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def checkout(self) -> Optional[str]:
        """What a pool sees before it reuses an idle connection: None (fine), "stray" (bytes
        nobody asked for), "closed" or "reset"."""
        if self.buf:
            return "stray"
        if self.eof:
            return "reset" if self.reset else "closed"
        return None

    async def _wait(self, timeout: float) -> bool:
        self._wake = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._wake, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._wake = None

    async def read_frame(self, timeout: float):
        """The next complete RESP frame; WireError if none comes within `timeout` of the last
        byte (a socket timeout, as clients have), or the connection ends first."""
        while True:
            try:
                frame, used = parse_frame(bytes(self.buf))
                del self.buf[:used]
                return frame
            except Incomplete:
                pass
            except (ProtocolError, ValueError) as exc:
                raise WireError("mismatch", f"unparsable reply {bytes(self.buf[:160])!r}: {exc}")
            if self.eof:
                raise WireError("reset" if self.reset else "closed",
                                "connection ended before the reply", bytes(self.buf))
            if not await self._wait(timeout):
                raise WireError("timeout", f"no byte for {timeout:g}s", bytes(self.buf))

    async def wait_closed(self, timeout: float) -> None:
        """The peer closes; a byte before that is a mismatch."""
        while not self.eof:
            if not await self._wait(timeout):
                raise WireError("timeout", f"not closed within {timeout:g}s")
        if self.buf:
            raise WireError("mismatch", f"stray bytes before the close {bytes(self.buf[:160])!r}")


async def open_conn(address: Tuple[str, int]) -> Conn:
    loop = asyncio.get_running_loop()
    try:
        _, conn = await asyncio.wait_for(loop.create_connection(Conn, *address), 5)
    except (OSError, asyncio.TimeoutError) as exc:
        raise WireError("connect", repr(exc))
    return conn


def matches(expect: Expect, raw: bytes) -> bool:
    if isinstance(expect, bytes):
        return raw == expect
    return expect.fullmatch(raw) is not None


def show(expect: Expect) -> str:
    text = repr(expect if isinstance(expect, bytes) else expect.pattern)
    return text if len(text) < 160 else text[:150] + "...'"


async def send_split(conn: Conn, data: bytes, rng: random.Random) -> None:
    """Send `data` in pieces cut at random bytes, with pauses between them: mostly none or a
    few ms, sometimes 0.7-1.4 s (around the keepalive interval, so the filter's timers fire
    mid-pipeline, between frames or inside one)."""
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 5)))) \
        if len(data) > 1 else []
    edges = [0] + cuts + [len(data)]
    for i in range(len(edges) - 1):
        conn.write(data[edges[i]:edges[i + 1]])
        if i < len(edges) - 2:
            r = rng.random()
            if r < 0.08:
                await asyncio.sleep(rng.uniform(0.7, 1.4))
            elif r < 0.4:
                await asyncio.sleep(rng.uniform(0, 0.05))


async def exchange(conn: Conn, payload: bytes, expects: Sequence[Expect], rng: random.Random,
                   timeout: float, split: bool = True) -> Tuple[int, List[bytes]]:
    """Send a pipeline, then read exactly one frame per expected reply and compare it.
    Returns (bytes verified, the frames)."""
    if split:
        await send_split(conn, payload, rng)
    else:
        conn.write(payload)
    verified, frames = 0, []
    for i, expect in enumerate(expects):
        try:
            frame = await conn.read_frame(timeout)
        except WireError as err:
            if isinstance(expect, bytes) and err.partial and not expect.startswith(err.partial):
                raise WireError("mismatch", f"reply {i + 1}/{len(expects)}: expected "
                                f"{show(expect)}, got {err.partial[:160]!r} then {err.kind}")
            raise
        if not matches(expect, frame.raw):
            raise WireError("mismatch", f"reply {i + 1}/{len(expects)}: expected {show(expect)}, "
                            f"got {bytes(frame.raw[:160])!r}")
        verified += len(frame.raw)
        frames.append(bytes(frame.raw))
    return verified, frames


# -- what Redis must answer ----------------------------------------------------------------
def bulk(v: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(v), v)


def integer(n: int) -> bytes:
    return b":%d\r\n" % n


def null(resp3: bool) -> bytes:
    return b"_\r\n" if resp3 else b"$-1\r\n"


def push_or_array(resp3: bool, items: Sequence[bytes]) -> bytes:
    return (b">%d\r\n" if resp3 else b"*%d\r\n") % len(items) + b"".join(items)


def random_value(rng: random.Random, big: bool) -> bytes:
    r = rng.random()
    if r < 0.35:
        return rng.choice(LOOKALIKES)
    if big and r < 0.41:
        return rng.randbytes(rng.randint(16_000, 70_000))
    return rng.randbytes(rng.randint(1, 300))


def hello_pattern(reply: bytes) -> "re.Pattern[bytes]":
    """HELLO 3's reply as this Redis gives it, with any client id."""
    head, sep, tail = reply.partition(b"$2\r\nid\r\n:")
    if not sep:
        raise LabError(f"unexpected HELLO reply {reply!r}")
    rest = tail.split(b"\r\n", 1)[1]
    return re.compile(re.escape(head + sep) + rb"\d+\r\n" + re.escape(rest), re.DOTALL)


class Model:
    """One connection's keys (fresh per connection: the names carry its serial) and what Redis
    holds in them, to predict every reply exactly."""

    KEYS = 8
    WEIGHTS = {"set": 20, "get": 20, "ping": 5, "ping_token": 8, "echo": 6, "ping_value": 4,
               "incr": 6, "append": 5, "strlen": 5, "exists": 4, "del": 3, "inline_token": 3,
               "inline_ping": 2, "multi": 8}

    def __init__(self, prefix: str, resp3: bool, big: bool):
        self.prefix = prefix.encode()
        self.resp3 = resp3
        self.big = big
        # key → (value, or None: known absent; when it was set)
        self.values: Dict[bytes, Tuple[Optional[bytes], float]] = {}

    def _key(self, i: int) -> bytes:
        return self.prefix + b":%d" % i

    def _known(self, key: bytes, now: float) -> bool:
        """The model knows this key's content: never set, deleted, or set recently."""
        v = self.values.get(key)
        return v is None or v[0] is None or now - v[1] < FRESH_S

    def _get(self, key: bytes) -> Optional[bytes]:
        v = self.values.get(key)
        return None if v is None else v[0]

    def _set(self, key: bytes, value: bytes, now: float) -> Tuple[bytes, bytes]:
        self.values[key] = (value, now)
        return encode_command(b"SET", key, value, b"PX", str(KEY_TTL_MS)), b"+OK\r\n"

    def command(self, rng: random.Random, now: float, inner: bool = False) -> List[Tuple[bytes, bytes]]:
        """One command (two when a key must be written first) as (bytes, expected reply)."""
        kinds = [k for k in self.WEIGHTS if not (inner and k in ("multi", "inline_token",
                                                                  "inline_ping"))]
        kind = rng.choices(kinds, [self.WEIGHTS[k] for k in kinds])[0]
        key = self._key(rng.randrange(self.KEYS))
        out: List[Tuple[bytes, bytes]] = []
        if not self._known(key, now) or (kind in ("append", "incr") and self._get(key) is None):
            out.append(self._set(key, b"0" if kind == "incr" else random_value(rng, False), now))
        if kind == "incr" and not INTEGER.fullmatch(self._get(key) or b""):
            out.append(self._set(key, b"%d" % rng.randint(0, 1000), now))
        value = self._get(key)
        if kind == "set":
            out.append(self._set(key, random_value(rng, self.big), now))
        elif kind == "get":
            out.append((encode_command(b"GET", key), null(self.resp3) if value is None
                        else bulk(value)))
        elif kind == "ping":
            out.append((encode_command(b"PING"), b"+PONG\r\n"))
        elif kind == "ping_token":
            out.append((FILTER_PING, FILTER_REPLY))
        elif kind == "echo":
            v = random_value(rng, False)
            out.append((encode_command(b"ECHO", v), bulk(v)))
        elif kind == "ping_value":
            v = random_value(rng, False)
            out.append((encode_command(b"PING", v), bulk(v)))
        elif kind == "incr":
            n = int(value) + 1
            self.values[key] = (b"%d" % n, self.values[key][1])
            out.append((encode_command(b"INCR", key), integer(n)))
        elif kind == "append":
            v = random_value(rng, False)
            self.values[key] = (value + v, self.values[key][1])
            out.append((encode_command(b"APPEND", key, v), integer(len(value) + len(v))))
        elif kind == "strlen":
            out.append((encode_command(b"STRLEN", key), integer(len(value or b""))))
        elif kind == "exists":
            out.append((encode_command(b"EXISTS", key), integer(0 if value is None else 1)))
        elif kind == "del":
            self.values[key] = (None, now)
            out.append((encode_command(b"DEL", key), integer(0 if value is None else 1)))
        elif kind == "inline_token":
            out.append((b"PING redis-idle-guard\r\n", FILTER_REPLY))
        elif kind == "inline_ping":
            out.append((b"PING\r\n", b"+PONG\r\n"))
        else:  # MULTI ... EXEC: one aggregate reply holding the queued commands' replies
            inner_cmds = [c for _ in range(rng.randint(1, 3)) for c in self.command(rng, now, True)]
            out.append((encode_command(b"MULTI"), b"+OK\r\n"))
            out += [(c, b"+QUEUED\r\n") for c, _ in inner_cmds]
            out.append((encode_command(b"EXEC"),
                        b"*%d\r\n" % len(inner_cmds) + b"".join(r for _, r in inner_cmds)))
        return out

    def batch(self, rng: random.Random, now: float, size: int) -> Tuple[bytes, List[bytes]]:
        cmds = [c for _ in range(size) for c in self.command(rng, now)]
        return b"".join(c for c, _ in cmds), [r for _, r in cmds]


# -- the record ----------------------------------------------------------------------------
@dataclass
class ErrorRecord:
    at: float
    cycle: int
    chain: str
    client: str
    kind: str
    detail: str


@dataclass
class ChainCounts:
    connections: int = 0       # client connections opened
    replies: int = 0           # replies, messages and elements verified byte for byte
    bytes: int = 0             # their bytes
    idle_closes: int = 0       # connections found closed at checkout (a pool reconnects)
    kills: int = 0             # connections closed by CLIENT KILL, as expected
    client_closes: int = 0     # connections the churners closed (close, QUIT, half-close)


class Ledger:
    """Everything the clients saw, by chain and by cycle."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.cycle = 0
        self.counts = {c: ChainCounts() for c in CHAINS}
        self.errors: List[ErrorRecord] = []
        self.idle_closes: Counter = Counter()   # (cycle, chain, client) → closes at checkout

    def now(self) -> float:
        return time.monotonic() - self.t0

    def error(self, chain: str, client: str, err: WireError) -> None:
        self.errors.append(ErrorRecord(self.now(), self.cycle, chain, client, err.kind,
                                       err.detail[:400]))

    def idle_close(self, chain: str, client: str) -> None:
        self.counts[chain].idle_closes += 1
        self.idle_closes[(self.cycle, chain, client)] += 1

    def verified(self, chain: str, nbytes: int, replies: int) -> None:
        self.counts[chain].replies += replies
        self.counts[chain].bytes += nbytes


# -- the clients ---------------------------------------------------------------------------
class Client:
    """One application connection (or two) that runs rounds until the soak ends, parks at
    each checkpoint with its connections checked, and reconnects after any failure."""

    def __init__(self, soak: "Soak", chain: str, name: str, resp3: bool = False):
        self.soak = soak
        self.chain = chain
        self.name = name
        self.resp3 = resp3
        self.rng = random.Random(f"{soak.s.seed}:{name}")  # the same workload through both chains
        self.conns: Dict[str, Conn] = {}
        self.serial = 0
        self.phase = ""  # what the client is doing, for error records

    @property
    def ledger(self) -> Ledger:
        return self.soak.ledger

    async def open(self, resp3: bool = False) -> Conn:
        conn = await open_conn(self.soak.addresses[self.chain])
        self.ledger.counts[self.chain].connections += 1
        self.serial += 1
        if resp3:
            try:
                await self.run(conn, encode_command("HELLO", "3"), [self.soak.hello])
            except WireError:
                conn.close()
                raise
        return conn

    async def run(self, conn: Conn, payload: bytes, expects: Sequence[Expect],
                  split: bool = True, timeout: Optional[float] = None) -> List[bytes]:
        n, frames = await exchange(conn, payload, expects, self.rng,
                                   timeout or self.soak.s.client_timeout_s, split)
        self.ledger.verified(self.chain, n, len(expects))
        return frames

    def checkout(self, conn: Optional[Conn]) -> bool:
        """True if the connection can be used; a close seen here is a reconnect, not an error;
        bytes nobody asked for are a mismatch."""
        if conn is None:
            return False
        state = conn.checkout()
        if state == "stray":
            raise WireError("mismatch", f"stray bytes on an idle connection {bytes(conn.buf[:160])!r}")
        if state is not None:
            self.ledger.idle_close(self.chain, self.name)
            conn.close()
            return False
        return True

    def drop(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns = {}

    def open_count(self) -> int:
        return sum(1 for c in self.conns.values() if c.open)

    async def idle(self) -> None:
        r = self.rng.random()
        d = (self.rng.uniform(0, 0.5) if r < 0.35 else self.rng.uniform(0.8, 1.4) if r < 0.6
             else self.rng.uniform(3.5, 6.0))
        await self.soak.idle(d)

    async def ensure(self) -> None:
        """Connections checked out, or opened anew."""
        raise NotImplementedError

    async def round(self) -> None:
        raise NotImplementedError

    async def health(self) -> None:
        """At a checkpoint: every connection checked and proven with a verified PING."""
        raise NotImplementedError

    def at(self, phase: str) -> None:
        self.phase = phase

    async def _guarded(self, step: Callable[[], Any]) -> bool:
        try:
            await step()
            return True
        except WireError as err:
            conns = "; ".join(f"{k}: {c.describe()}" for k, c in self.conns.items())
            err.detail = f"{err.detail} [{self.phase}; {conns}]"
            self.ledger.error(self.chain, self.name, err)
            self.drop()
            return False

    async def park(self) -> None:
        if not await self._guarded(self.health):
            await self._guarded(self.health)  # once more, on new connections
        self.soak.parked += 1
        try:
            await self.soak.go.wait()
        finally:
            self.soak.parked -= 1

    async def loop(self) -> None:
        try:
            while not self.soak.stopping:
                if not self.soak.go.is_set():
                    await self.park()
                    continue
                await self._guarded(self.round)
        except Exception as exc:  # noqa: BLE001 - a harness bug: the checkpoint reports it
            self.soak.crashed.append(f"{self.chain}/{self.name}: {exc!r}")
            raise
        finally:
            self.drop()


class PipelineClient(Client):
    """Batches of 1-100 commands (MULTI/EXEC among them), split at random bytes, then idle."""

    async def ensure(self) -> None:
        conn = self.conns.get("main")
        if self.checkout(conn):
            return
        self.conns = {}
        conn = await self.open(self.resp3)
        self.conns["main"] = conn
        self.model = Model(f"soak:{self.soak.tag}:{self.chain}:{self.name}:{self.serial}",
                           self.resp3, big=True)

    async def round(self) -> None:
        self.at("connect")
        await self.ensure()
        size = self.rng.choice([1, 1, 2, 3, 5, 8, 13, 20, 50, 100])
        payload, expects = self.model.batch(self.rng, time.monotonic(), size)
        self.at(f"batch of {len(expects)} replies, {len(payload)} bytes")
        await self.run(self.conns["main"], payload, expects)
        await self.idle()

    async def health(self) -> None:
        self.at("checkpoint")
        await self.ensure()
        await self.run(self.conns["main"], FILTER_PING, [FILTER_REPLY], split=False)


class Subscriber(Client):
    """A subscriber (RESP2 or RESP3) on a channel of its own, and a RESP2 publisher: publish,
    then the message must arrive, byte for byte; sometimes PING in subscribed mode."""

    def channel(self) -> bytes:
        return f"soak:{self.soak.tag}:{self.chain}:{self.name}:{self.serial}".encode()

    async def ensure(self) -> None:
        sub, pub = self.conns.get("sub"), self.conns.get("pub")
        if not self.checkout(sub):
            if sub is not None:
                sub.close()
            sub = await self.open(self.resp3)
            self.conns["sub"] = sub
            self.chan = self.channel()
            confirm = push_or_array(self.resp3, [bulk(b"subscribe"), bulk(self.chan),
                                                 integer(1)])
            await self.run(sub, encode_command(b"SUBSCRIBE", self.chan), [confirm])
        if not self.checkout(pub):
            self.conns["pub"] = await self.open()

    async def publish(self) -> None:
        payload = random_value(self.rng, False)
        if self.rng.random() < 0.5:
            payload = b"%d:" % self.serial + payload
        frames = await self.run(self.conns["pub"], encode_command(b"PUBLISH", self.chan, payload),
                                [re.compile(rb":[01]\r\n")])
        sub = self.conns["sub"]
        if frames[0] == b":0\r\n":  # Redis dropped the subscriber: its close must come
            try:
                await sub.wait_closed(self.soak.s.client_timeout_s)
            except WireError as err:
                raise WireError("lost" if err.kind == "timeout" else err.kind,
                                "PUBLISH reached nobody, the subscriber was not closed")
            self.checkout(sub)
            return
        message = push_or_array(self.resp3, [bulk(b"message"), bulk(self.chan), bulk(payload)])
        try:
            frame = await sub.read_frame(self.soak.s.client_timeout_s)
        except WireError as err:
            raise WireError("lost" if err.kind == "timeout" else err.kind,
                            f"published message not received ({err.detail})", err.partial)
        if frame.raw != message:
            raise WireError("mismatch", f"message: expected {message[:160]!r}, got "
                            f"{bytes(frame.raw[:160])!r}")
        self.ledger.verified(self.chain, len(frame.raw), 1)

    async def sub_ping(self) -> None:
        token = self.rng.random() < 0.7
        if self.resp3:
            reply = FILTER_REPLY if token else b"+PONG\r\n"
        else:
            reply = push_or_array(False, [bulk(b"pong"), bulk(TOKEN if token else b"")])
        await self.run(self.conns["sub"], FILTER_PING if token else encode_command(b"PING"),
                       [reply])

    async def round(self) -> None:
        self.at("connect")
        await self.ensure()
        if self.rng.random() < 0.7:
            self.at("publish")
            await self.publish()
        else:
            self.at("PING, subscribed")
            await self.sub_ping()
        await self.idle()

    async def health(self) -> None:
        self.at("checkpoint")
        await self.ensure()
        await self.sub_ping()
        await self.run(self.conns["pub"], encode_command(b"PING"), [b"+PONG\r\n"], split=False)


class Blocker(Client):
    """BLPOP (RESP2 or RESP3) on a list of its own, with timeouts of 1.5-4 s or none; a RESP2
    pusher pushes an element during the wait, or not: the element (or the timeout's null)
    must come back byte for byte. The filter keeps these alive behind the blocked command."""

    async def ensure(self) -> None:
        blk, push = self.conns.get("blk"), self.conns.get("push")
        if not self.checkout(blk):
            if blk is not None:
                blk.close()
            self.conns["blk"] = await self.open(self.resp3)
            self.key = f"soak:{self.soak.tag}:{self.chain}:{self.name}:{self.serial}".encode()
            self.waiting: List[bytes] = []  # pushed, not popped yet
        if not self.checkout(push):
            self.conns["push"] = await self.open()

    async def _push(self, after: float, element: bytes) -> None:
        await asyncio.sleep(after)
        await self.run(self.conns["push"], encode_command(b"RPUSH", self.key, element),
                       [integer(len(self.waiting) + 1)], split=False)
        self.waiting.append(element)

    async def round(self) -> None:
        self.at("connect")
        await self.ensure()
        block = self.rng.choice([1.5, 2.5, 4.0, 0.0])
        element = random_value(self.rng, False)
        push_after = None
        if not self.waiting and (block == 0 or self.rng.random() < 0.6):
            push_after = self.rng.uniform(0.3, (block or 5.0) - 1.0)
        s = self.soak.s
        blk = self.conns["blk"]
        self.at(f"BLPOP {block:g}, push after {push_after}")
        blk.write(encode_command(b"BLPOP", self.key, b"%g" % block))
        pusher = asyncio.ensure_future(self._push(push_after, element)) \
            if push_after is not None else None
        try:
            frame = await blk.read_frame((push_after or block) + s.client_timeout_s)
        finally:
            if pusher is not None:
                try:
                    await pusher
                except WireError:
                    self.drop()  # the list's content is unknown now: a new list next round
                    raise
        popped = self.waiting[0] if self.waiting else None
        nil = b"_\r\n" if self.resp3 else b"*-1\r\n"
        if popped is not None and frame.raw == b"*2\r\n" + bulk(self.key) + bulk(popped):
            self.waiting.pop(0)
        elif frame.raw != nil or (popped is not None and pusher is None):
            raise WireError("mismatch", f"BLPOP: expected {popped!r:.80} or null, got "
                            f"{bytes(frame.raw[:160])!r}")
        self.ledger.verified(self.chain, len(frame.raw), 1)
        await self.idle()

    async def health(self) -> None:
        self.at("checkpoint")
        await self.ensure()
        await self.run(self.conns["blk"], FILTER_PING, [FILTER_REPLY], split=False)
        await self.run(self.conns["push"], encode_command(b"PING"), [b"+PONG\r\n"], split=False)


class Churner(Client):
    """One short connection per round: opened, used (a small verified batch), maybe left idle,
    and closed by the client (close, QUIT, half-close) or by Redis (CLIENT KILL)."""

    ENDINGS = {"close": 35, "idle": 30, "kill": 20, "quit": 10, "half_close": 5}

    async def round(self) -> None:
        resp3 = self.rng.random() < 0.3
        self.at("connect")
        conn = await self.open(resp3)
        self.conns = {"main": conn}
        model = Model(f"soak:{self.soak.tag}:{self.chain}:{self.name}:{self.serial}", resp3,
                      big=False)
        ending = self.rng.choices(list(self.ENDINGS), list(self.ENDINGS.values()))[0]
        payload, expects = model.batch(self.rng, time.monotonic(), self.rng.randint(1, 5))
        expects = list(expects)
        if ending == "kill":
            payload += encode_command(b"CLIENT", b"ID")
            expects.append(re.compile(rb":\d+\r\n"))
        self.at(f"first batch ({ending} next)")
        frames = await self.run(conn, payload, expects)
        s = self.soak.s
        if ending == "idle":
            idle = self.rng.uniform(0.2, 3.5)
            await self.soak.idle(idle)
            if self.checkout(conn) and self.rng.random() < 0.5:
                payload, expects = model.batch(self.rng, time.monotonic(), self.rng.randint(1, 3))
                self.at(f"batch after {idle:.1f}s idle")
                await self.run(conn, payload, expects)
        elif ending == "kill":
            self.at("CLIENT KILL")
            client_id = frames[-1][1:-2].decode()
            await self.soak.redis_cli("CLIENT", "KILL", "ID", client_id)
            # Redis's FIN reaches the client through Envoy; through a black hole only the
            # filter's unanswered keepalive closes it (keepalive + ping_timeout).
            await conn.wait_closed(s.client_timeout_s + 4)
            self.ledger.counts[self.chain].kills += 1
        elif ending == "quit":
            self.at("QUIT")
            await self.run(conn, encode_command(b"QUIT"), [b"+OK\r\n"])
            await conn.wait_closed(s.client_timeout_s)
        elif ending == "half_close":
            self.at("half-close")
            if conn.transport.can_write_eof():
                conn.transport.write_eof()
            await conn.wait_closed(s.client_timeout_s)
        if conn.open and conn.checkout() == "stray":
            raise WireError("mismatch", f"stray bytes before the close {bytes(conn.buf[:160])!r}")
        if ending != "kill":
            self.ledger.counts[self.chain].client_closes += 1
        self.drop()

    async def health(self) -> None:
        self.drop()  # a churner parks with no connection


# -- the run -------------------------------------------------------------------------------
@dataclass
class Sample:
    t: float
    cycle: int
    guard: Dict[str, float]      # the filter's stats
    cx_active: Dict[str, float]  # Envoy's client connections, per chain
    rss_mib: Dict[str, float]
    fds: Dict[str, int]
    errors: Dict[str, int]       # cumulative, per chain
    connections: Dict[str, int]  # cumulative client connections, per chain


@dataclass
class Checkpoint:
    cycle: int
    fault: str
    t: float
    expected: Dict[str, int]     # connections the clients hold, per chain
    cx_active: Dict[str, float]
    gauge: float
    memory: float
    fds: Dict[str, int]
    rss_mib: Dict[str, float]
    settled: bool                # the gauge equals Envoy's count (and covers the clients')

    @property
    def like_start(self) -> bool:
        """The filter holds exactly the clients' idle long-lived connections, no half-closed
        ones: checkpoints like this compare like with like."""
        return self.settled and self.gauge == self.expected["guard"]


@dataclass
class CycleRecord:
    index: int
    fault: str
    start: float
    armed: float = 0.0
    disarmed: float = 0.0
    end: float = 0.0
    note: str = ""
    peak_memory: float = 0.0


@dataclass
class SoakResult:
    build: str
    settings: Settings
    seconds: float = 0.0
    cycles: List[CycleRecord] = field(default_factory=list)
    checkpoints: List[Checkpoint] = field(default_factory=list)
    samples: List[Sample] = field(default_factory=list)
    counts: Dict[str, ChainCounts] = field(default_factory=dict)
    errors: List[ErrorRecord] = field(default_factory=list)
    idle_closes: Counter = field(default_factory=Counter)
    start: Dict[str, Any] = field(default_factory=dict)
    end: Dict[str, Any] = field(default_factory=dict)
    guard_stats: Dict[str, float] = field(default_factory=dict)
    envoy_counters: Dict[str, Dict[str, float]] = field(default_factory=dict)
    vm_failures: List[str] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)
    memory_notes: List[str] = field(default_factory=list)


def proc_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


ENVOY_VIEW = (r"^(wasmcustom|dynamicmodulescustom)\.redis_idle_guard\.|"
              r"^listener\.127\.0\.0\.1_\d+\.downstream_cx_active$")


# Envoy's own view of the upstream connections (connect timeouts, resets by Redis or the path).
ENVOY_COUNTERS = (r"^cluster\.redis\.upstream_cx_(total|connect_fail|connect_timeout|"
                  r"destroy_local|destroy_remote|destroy_local_with_active_rq|"
                  r"destroy_remote_with_active_rq|rx_bytes_total|tx_bytes_total)$|"
                  r"^tcp\.redis\.(idle_timeout|downstream_cx_total|upstream_flush_total)$")


def envoy_view(envoy: EnvoyProxy) -> Tuple[Dict[str, float], float]:
    """(the filter's stats by their documented names, Envoy's own count of client connections
    on the listener), from one read of /stats, so that the two agree in time."""
    stats = envoy.stats(ENVOY_VIEW)
    cx = sum(v for k, v in stats.items() if k.startswith("listener."))
    prefix = (envoy.module.stats_prefix if envoy.module else "") + "redis_idle_guard."
    return {k[len(prefix):]: v for k, v in stats.items() if k.startswith(prefix)}, cx


class Soak:
    """The clients, the fault schedule, the checkpoints and the sampler, on one event loop."""

    def __init__(self, s: Settings, path: SoakPath, envoys: Dict[str, EnvoyProxy],
                 hello: "re.Pattern[bytes]", result: SoakResult):
        self.s = s
        self.path = path
        self.envoys = envoys
        self.addresses = {c: e.address for c, e in envoys.items()}
        self.hello = hello
        self.result = result
        self.tag = f"{os.getpid()}"
        self.t0 = time.monotonic()
        self.ledger = Ledger(self.t0)
        self.go = asyncio.Event()
        self.halt = asyncio.Event()
        self.stopping = False
        self.parked = 0
        self.clients: List[Client] = []
        self.crashed: List[str] = []

    # -- helpers for the clients -----------------------------------------------------------
    async def idle(self, seconds: float) -> None:
        """Sleep, but wake at once when a checkpoint is called."""
        try:
            await asyncio.wait_for(self.halt.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def redis_cli(self, *args: str, timeout: float = 15.0) -> str:
        proc = await asyncio.create_subprocess_exec(*self.path.redis_cli_argv(*args),
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return "timeout"
        return out.decode(errors="replace").strip()

    # -- the clients -----------------------------------------------------------------------
    def make_clients(self) -> None:
        for chain in CHAINS:
            for i in range(self.s.pipelines):
                self.clients.append(PipelineClient(self, chain, f"pipeline{i}", resp3=i % 2 == 1))
            self.clients.append(Subscriber(self, chain, "sub-resp2"))
            self.clients.append(Subscriber(self, chain, "sub-resp3", resp3=True))
            self.clients.append(Blocker(self, chain, "blpop-resp2"))
            self.clients.append(Blocker(self, chain, "blpop-resp3", resp3=True))
            for i in range(self.s.churners):
                self.clients.append(Churner(self, chain, f"churn{i}"))

    # -- faults ----------------------------------------------------------------------------
    async def arm(self, fault: str, cycle: CycleRecord) -> Optional[asyncio.Task]:
        s, p = self.s, self.path
        if fault in ("nat_drop", "nat_reset"):
            await asyncio.to_thread(p.nat_arm, s.cutoff_s, fault == "nat_reset")
            cycle.note = f"conntrack timeout {s.cutoff_s}s"
        elif fault == "redis_timeout":
            cycle.note = await self.redis_cli("CONFIG", "SET", "timeout", str(s.cutoff_s))
        elif fault == "restart":
            t = time.monotonic()
            await asyncio.to_thread(p.redis.restart)
            cycle.note = f"restarted in {time.monotonic() - t:.2f}s"
        elif fault == "black_hole":
            cycle.note = f"{await asyncio.to_thread(p.black_hole)} flows black-holed"
        elif fault == "short_stall":
            return asyncio.ensure_future(self.stalls(cycle))
        elif fault == "long_stall":
            return asyncio.ensure_future(self.redis_cli("DEBUG", "SLEEP", f"{s.long_stall_s:g}"))
        return None

    async def stalls(self, cycle: CycleRecord) -> None:
        n = 0
        end = time.monotonic() + self.s.armed_s
        while time.monotonic() < end:
            await self.redis_cli("DEBUG", "SLEEP", f"{self.s.short_stall_s:g}")
            n += 1
            await asyncio.sleep(self.s.stall_gap_s)
        cycle.note = f"{n} stalls of {self.s.short_stall_s:g}s"

    async def disarm(self, fault: str, task: Optional[asyncio.Task]) -> None:
        if task is not None:
            await task
        if fault in ("nat_drop", "nat_reset"):
            await asyncio.to_thread(self.path.nat_disarm)
        elif fault == "redis_timeout":
            await self.redis_cli("CONFIG", "SET", "timeout", "0")

    # -- checkpoints -----------------------------------------------------------------------
    async def checkpoint(self, cycle: CycleRecord) -> None:
        self.go.clear()
        self.halt.set()
        deadline = time.monotonic() + 60
        while self.parked < len(self.clients):
            if self.crashed:
                raise LabError(f"client task failed: {self.crashed[0]}")
            if time.monotonic() > deadline:
                raise LabError(f"checkpoint {cycle.index}: only {self.parked} of "
                               f"{len(self.clients)} clients parked within 60 s")
            await asyncio.sleep(0.05)
        expected = {c: sum(cl.open_count() for cl in self.clients if cl.chain == c)
                    for c in CHAINS}
        # The gauge must equal Envoy's own count; Envoy may hold more than the clients do
        # (half-closed connections on dead flows, see envoy_idle_timeout_s).
        settled, view = False, {}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            view = await asyncio.to_thread(self.read_counts)
            if view["gauge"] == view["cx"]["guard"] and all(
                    view["cx"][c] >= expected[c] for c in CHAINS):
                settled = True
                break
            await asyncio.sleep(0.2)
        self.result.checkpoints.append(Checkpoint(
            cycle.index, cycle.fault, self.ledger.now(), expected, view["cx"], view["gauge"],
            view["memory"], view["fds"], view["rss"], settled))
        self.halt.clear()
        self.go.set()

    def read_counts(self) -> Dict[str, Any]:
        guard, cx_guard = envoy_view(self.envoys["guard"])
        _, cx_plain = envoy_view(self.envoys["plain"])
        return {"guard": guard, "gauge": guard.get("connections", -1),
                "memory": guard.get("vm_memory_bytes", 0),
                "cx": {"plain": cx_plain, "guard": cx_guard},
                "fds": {c: proc_fds(e.process.pid) for c, e in self.envoys.items()},
                "rss": {c: proc_rss_mib(e.process.pid) for c, e in self.envoys.items()}}

    # -- sampling --------------------------------------------------------------------------
    def sample(self) -> Sample:
        view = self.read_counts()
        errors = Counter(e.chain for e in self.ledger.errors)
        return Sample(self.ledger.now(), self.ledger.cycle, view["guard"], view["cx"], view["rss"],
                      view["fds"], {c: errors[c] for c in CHAINS},
                      {c: self.ledger.counts[c].connections for c in CHAINS})

    async def sampler(self) -> None:
        while not self.stopping:
            sample = await asyncio.to_thread(self.sample)
            self.result.samples.append(sample)
            await asyncio.sleep(max(0.0, 1.0 - (self.ledger.now() - sample.t)))

    # -- the schedule ----------------------------------------------------------------------
    def cycle_estimate(self) -> float:
        """Seconds per cycle: measured once cycles have run, else the plan plus a checkpoint."""
        done = [c.end - c.start for c in self.result.cycles if c.end]
        return statistics.mean(done) if done else \
            self.s.lead_s + self.s.armed_s + self.s.tail_s + 1.5

    def more_cycles(self, done: int) -> bool:
        """Every fault once at least; then as long as another cycle fits in the time."""
        return done < len(FAULTS) or self.ledger.now() + self.cycle_estimate() <= self.s.seconds

    async def run(self) -> None:
        self.make_clients()
        self.go.set()
        tasks = [asyncio.ensure_future(c.loop()) for c in self.clients]
        sampler = asyncio.ensure_future(self.sampler())
        try:
            i = 0
            while self.more_cycles(i):
                fault = FAULTS[i % len(FAULTS)]
                cycle = CycleRecord(i, fault, self.ledger.now())
                self.result.cycles.append(cycle)
                self.ledger.cycle = i
                await asyncio.sleep(self.s.lead_s)
                cycle.armed = self.ledger.now()
                task = await self.arm(fault, cycle)
                await asyncio.sleep(self.s.armed_s)
                await self.disarm(fault, task)
                cycle.disarmed = self.ledger.now()
                await asyncio.sleep(self.s.tail_s)
                await self.checkpoint(cycle)
                cycle.end = self.ledger.now()
                say(f"cycle {i:3d} {fault:13} {cycle.note:40.40} errors plain/guard "
                    f"{self.cycle_errors(i, 'plain')}/{self.cycle_errors(i, 'guard')}; "
                    f"connections {self.ledger.counts['plain'].connections}/"
                    f"{self.ledger.counts['guard'].connections}; filter memory "
                    f"{self.result.checkpoints[-1].memory / 1024:.0f} KiB")
                i += 1
        finally:
            self.stopping = True
            self.halt.set()
            self.go.set()
            await asyncio.wait(tasks, timeout=30)
            for t in tasks:
                t.cancel()
            for c in self.clients:
                c.drop()
            await asyncio.wait([sampler], timeout=5)

    def cycle_errors(self, cycle: int, chain: str) -> int:
        return sum(1 for e in self.ledger.errors if e.cycle == cycle and e.chain == chain)


# -- the verdict ---------------------------------------------------------------------------
def error_table(result: SoakResult) -> Dict[Tuple[str, str, str], int]:
    """(fault, chain, kind) → errors."""
    faults = {c.index: c.fault for c in result.cycles}
    return Counter((faults.get(e.cycle, "?"), e.chain, e.kind) for e in result.errors)


def duration_s(duration: str) -> float:
    """'1s', '250ms' → seconds (the durations Settings uses)."""
    return float(duration[:-2]) / 1000 if duration.endswith("ms") else float(duration[:-1])


def explained_for(fault: str, s: Settings) -> float:
    """How long after a fault is armed it can still explain an error: the commands it caught
    in flight, plus those sent before the filter could know (keepalive + ping_timeout), each
    waiting at most the longest wait here, with a second's margin."""
    wait = LONGEST_BLOCK_S + s.client_timeout_s
    if fault == "restart":
        return 1.0 + wait + 1.0                         # Redis is back within a second
    if fault == "black_hole":
        return duration_s(s.keepalive) + duration_s(s.ping_timeout) + wait + 1.0
    if fault == "long_stall":
        return s.long_stall_s + wait + 1.0
    return 0.0


def unexplained(result: SoakResult) -> List[ErrorRecord]:
    """Errors through the filter that the fault armed at their time does not explain: its
    cycle's fault takes in-flight commands from every client, the error is of a kind that
    fault causes, and it came within explained_for() of the fault (see the module doc)."""
    cycles = {c.index: c for c in result.cycles}
    out = []
    for e in result.errors:
        if e.chain != "guard":
            continue
        c = cycles.get(e.cycle)
        ok = (c is not None and e.kind in HITS_EVERY_CLIENT.get(c.fault, set())
              and c.armed - 0.1 <= e.at <= c.armed + explained_for(c.fault, result.settings))
        if not ok:
            out.append(e)
    return out


# Cycles in which the filter's PINGs are answered at once (the faults it rides out, minus the
# stalls): nothing is held behind a PING for more than a round trip, so the only memory such a
# cycle can take is what its churn leaves behind.
MEMORY_CALM = ("nat_drop", "redis_timeout", "nat_reset")


def memory_tolerance(build: str) -> float:
    """Growth allowed after warm-up, per judged step and in all (see memory_verdict).
    Wasm: linear memory grows by whole 64 KiB pages and never shrinks; one page in each
    worker's VM (2) is the smallest growth it can show. Native: the heap is counted to the
    byte and held bytes are freed on release; 32 KiB covers capacity the workers' spare
    buffers keep, while a leak of 64 bytes per connection takes about 4 KiB a cycle here
    (some 60 churned connections) and 32 KiB within 8 cycles."""
    return 64 * 1024 * 2 if build == "wasm" else 32 * 1024


def memory_verdict(result: SoakResult) -> Tuple[List[str], List[str]]:
    """(failures, notes) for the filter's memory at the checkpoints after warm-up that hold
    the same idle connections (like with like: no churn, nothing held, no half-closed ones).
    The cycles that delay PINGs (stalls, restart, black hole) hold up to 64 KiB of client
    bytes per connection (src/session/probe.rs MAX_HELD) and bring reconnects in a crowd,
    which may set a new high-water mark once: Wasm memory never shrinks, and the native heap
    keeps the capacity its maps and spare buffers grew to (measured: +32 KiB once, in a short
    stall, over 600 s). So the steps judged are those into the cycles in MEMORY_CALM, each and
    in sum within the tolerance: a leak grows the memory in those too, cycle after cycle."""
    tol = memory_tolerance(result.build)
    w = result.settings.warmup_checkpoints
    cps = [c for c in result.checkpoints if c.like_start and c.cycle >= w - 1]
    pairs = list(zip(cps, cps[1:]))
    pairs = [(a, b) for a, b in pairs if b.cycle == a.cycle + 1 and b.fault in MEMORY_CALM]
    if len(pairs) < 2:
        return [f"memory: only {len(pairs)} comparable steps after warm-up"], []
    fails = [f"memory grew {(b.memory - a.memory) / 1024:.1f} KiB from checkpoint {a.cycle} to "
             f"{b.cycle} ({b.fault}; tolerance {tol / 1024:.0f} KiB)"
             for a, b in pairs if b.memory - a.memory > tol]
    total = sum(b.memory - a.memory for a, b in pairs)
    if total > tol:
        fails.append(f"memory grew {total / 1024:.1f} KiB in all over the {len(pairs)} steps "
                     f"judged after warm-up (tolerance {tol / 1024:.0f} KiB)")
    grew = [(b.cycle, b.fault, b.memory - a.memory) for a, b in zip(cps, cps[1:])
            if b.memory > a.memory]
    notes = [f"filter memory at the {len(cps)} comparable checkpoints after warm-up (of "
             f"{len(result.checkpoints)}): {cps[0].memory / 1024:.1f} → "
             f"{cps[-1].memory / 1024:.1f} KiB; {len(pairs)} steps judged"
             f" (cycles {', '.join(MEMORY_CALM)}), "
             f"{total / 1024:+.1f} KiB in all, tolerance {tol / 1024:.0f} KiB; grew in: "
             + (", ".join(f"cycle {c} {f} {d / 1024:+.1f} KiB" for c, f, d in grew) or "none")]
    return fails, notes


def judge(result: SoakResult) -> List[str]:
    fails: List[str] = []
    mismatches = [e for e in result.errors if e.kind == "mismatch"]
    for e in mismatches[:10]:
        fails.append(f"byte mismatch ({e.chain}/{e.client}, cycle {e.cycle}, t={e.at:.1f}s): "
                     f"{e.detail}")
    if len(mismatches) > 10:
        fails.append(f"... {len(mismatches) - 10} more byte mismatches")
    bad = [e for e in unexplained(result) if e.kind != "mismatch"]
    faults = {c.index: c.fault for c in result.cycles}
    for e in bad[:10]:
        fails.append(f"unexplained error through the filter ({e.client}, cycle {e.cycle} "
                     f"{faults.get(e.cycle)}, t={e.at:.1f}s): {e.kind}: {e.detail}")
    if len(bad) > 10:
        fails.append(f"... {len(bad) - 10} more unexplained errors through the filter")
    for (cycle, chain, client), n in sorted(result.idle_closes.items()):
        if chain == "guard" and faults.get(cycle) in RIDDEN_OUT:
            fails.append(f"{n} idle connection(s) of {client} closed through the filter during "
                         f"{faults[cycle]} (cycle {cycle}): a false reconnect signal")
    table = error_table(result)
    for fault in MUST_BITE:
        if not any(c.fault == fault for c in result.cycles):
            continue
        bites = sum(n for (f, chain, _), n in table.items() if f == fault and chain == "plain")
        bites += sum(n for (cy, chain, _), n in result.idle_closes.items()
                     if chain == "plain" and faults.get(cy) == fault)
        if bites == 0:
            fails.append(f"{fault} did not bite the control (no error, no connection closed "
                         "through plain Envoy): the run proves nothing about it")
    for cp in result.checkpoints:
        if not cp.settled:
            fails.append(f"checkpoint {cp.cycle} ({cp.fault}): connections gauge {cp.gauge:g}, "
                         f"Envoy's client connections {cp.cx_active}, the clients hold "
                         f"{cp.expected}")
    end = result.end
    if end.get("gauge") != 0 or any(v != 0 for v in end.get("cx", {}).values()):
        fails.append(f"after every client left: connections gauge {end.get('gauge')}, Envoy's "
                     f"client connections {end.get('cx')}")
    for chain, n in end.get("fds", {}).items():
        if n != result.start["fds"][chain]:
            fails.append(f"{chain} Envoy has {n} open FDs after every client left, "
                         f"{result.start['fds'][chain]} at the start")
    mem_fails, result.memory_notes = memory_verdict(result)
    fails += mem_fails
    if result.guard_stats.get("passthrough", 0):
        fails.append(f"the filter passed through {result.guard_stats['passthrough']:g} "
                     "connection(s) (passthrough): it lost track of a stream")
    fails += [f"VM failure: {line}" for line in result.vm_failures[:10]]
    return fails


# -- the report ----------------------------------------------------------------------------
def errors_rows(result: SoakResult) -> List[List[str]]:
    """One row per fault: errors through plain Envoy and through the filter, by kind."""
    table = error_table(result)
    faults = {c.index: c.fault for c in result.cycles}
    rows = []
    for fault in FAULTS:
        n = sum(1 for c in result.cycles if c.fault == fault)
        if not n:
            continue
        row = [f"{fault} ×{n}"]
        for chain in CHAINS:
            kinds = {k: v for (f, c, k), v in table.items() if f == fault and c == chain}
            closes = sum(v for (cy, c, _), v in result.idle_closes.items()
                         if c == chain and faults.get(cy) == fault)
            text = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())) or "0"
            row.append(f"{text}; {closes} closed while idle")
        rows.append(row)
    return rows


def md_table(heads: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def summary_rows(result: SoakResult) -> List[List[Any]]:
    rows = []
    for chain in CHAINS:
        c = result.counts[chain]
        errs = sum(1 for e in result.errors if e.chain == chain)
        rows.append([chain, c.connections, c.replies, f"{c.bytes / 1e6:.1f} MB", errs,
                     c.idle_closes, c.kills, c.client_closes])
    return rows


SUMMARY_HEADS = ["chain", "connections", "replies verified", "bytes verified", "errors",
                 "closed while idle", "CLIENT KILLs", "client closes"]


def report_md(result: SoakResult) -> str:
    s = result.settings
    verdict = "PASS" if not result.failures else "FAIL"
    out = [f"# Soak, {result.build} build: {verdict}\n",
           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, tests/lab/soak.py "
           f"--seconds {s.seconds:g}: {result.seconds:.0f} s, {len(result.cycles)} cycles. "
           f"Envoy --concurrency 2, plain and with the filter ({json_config(s)}), side by side "
           f"through one fault-lab path to Redis. Cutoffs {s.cutoff_s} s, stalls "
           f"{s.short_stall_s:g} s and {s.long_stall_s:g} s, client timeout "
           f"{s.client_timeout_s:g} s.\n"]
    if result.failures:
        out.append("## Failures\n\n" + "".join(f"- {f}\n" for f in result.failures))
    out.append("## Traffic\n\n" + md_table(SUMMARY_HEADS, summary_rows(result)))
    out.append("\n## Errors by fault (each fault armed in turn; a cycle's errors are its "
               "fault's)\n\n" + md_table(["fault", "plain Envoy", "with the filter"],
                                         errors_rows(result)))
    cycles = {c.index: c for c in result.cycles}
    for chain in CHAINS:
        errs = [e for e in result.errors if e.chain == chain]
        if errs:
            out.append(f"\n<details><summary>Errors through {CHAIN_TITLES[chain]} ({len(errs)}; "
                       "s: after the fault was armed)</summary>\n\n" +
                       md_table(["cycle", "fault", "s", "client", "kind", "detail"], [
                           [e.cycle, cycles[e.cycle].fault,
                            f"{e.at - cycles[e.cycle].armed:.1f}", e.client, e.kind,
                            e.detail.replace("|", "/")] for e in errs]) + "\n</details>\n")
    injected = Counter(c.fault for c in result.cycles)
    out.append("\nFaults injected: " + ", ".join(f"{f} {injected[f]}" for f in FAULTS
                                                   if injected[f]) + ".\n")
    out.append("\n## Filter\n\n" + md_table(
        ["stat", "value"], [[k, f"{v:g}"] for k, v in sorted(result.guard_stats.items())
                            if not k.startswith("upstream")]))
    names = sorted(set(result.envoy_counters.get("plain", {})) |
                   set(result.envoy_counters.get("guard", {})))
    out.append("\n## Envoy's counters\n\n" + md_table(["counter", "plain", "with the filter"], [
        [n, f"{result.envoy_counters.get('plain', {}).get(n, 0):g}",
         f"{result.envoy_counters.get('guard', {}).get(n, 0):g}"] for n in names]))
    out.append("\n## Memory and resources\n\n" + md_table(
        ["", "start", "end"], resource_rows(result)))
    out += [f"\n{n}\n" for n in result.memory_notes]
    out.append("\n## Checkpoints\n\n" + md_table(
        ["cycle", "fault", "t (s)", "clients hold plain/guard", "gauge", "Envoy cx plain/guard",
         "filter memory KiB", "FDs plain/guard", "RSS MiB plain/guard"],
        [[c.cycle, c.fault, f"{c.t:.0f}", f"{c.expected['plain']}/{c.expected['guard']}",
          f"{c.gauge:g}", f"{c.cx_active['plain']:g}/{c.cx_active['guard']:g}",
          f"{c.memory / 1024:.0f}", f"{c.fds['plain']}/{c.fds['guard']}",
          f"{c.rss_mib['plain']:.1f}/{c.rss_mib['guard']:.1f}"] for c in result.checkpoints]))
    return "".join(out)


def json_config(s: Settings) -> str:
    return ", ".join(f"{k} {v}" for k, v in s.guard_config().items())


def resource_rows(result: SoakResult) -> List[List[str]]:
    st, en = result.start, result.end
    cps = result.checkpoints
    rows = [["filter memory (vm_memory_bytes), first → last checkpoint",
             f"{cps[0].memory / 1024:.0f} KiB" if cps else "-",
             f"{cps[-1].memory / 1024:.0f} KiB" if cps else "-"],
            ["filter memory, peak sample", "", f"{peak_memory(result) / 1024:.0f} KiB"]]
    for chain in CHAINS:
        rows.append([f"Envoy RSS, {chain}", f"{st['rss'][chain]:.1f} MiB",
                     f"{en['rss'][chain]:.1f} MiB"])
        rows.append([f"Envoy open FDs, {chain} (no client)", st["fds"][chain],
                     en.get("fds", {}).get(chain, "-")])
    return rows


def peak_memory(result: SoakResult) -> float:
    return max((x.guard.get("vm_memory_bytes", 0) for x in result.samples), default=0)


def summary_text(result: SoakResult) -> str:
    lines = [f"soak, {result.build} build: {'PASS' if not result.failures else 'FAIL'} "
             f"({result.seconds:.0f} s, {len(result.cycles)} cycles)"]
    for r in summary_rows(result):
        lines.append(f"  {r[0]:5}: {r[1]} connections, {r[2]} replies / {r[3]} verified, "
                     f"{r[4]} errors, {r[5]} closed while idle, {r[6]} CLIENT KILLs")
    lines.append("  errors by fault (plain Envoy | with the filter):")
    for row in errors_rows(result):
        lines.append(f"    {row[0]:16} {row[1]:40} | {row[2]}")
    g = result.guard_stats
    lines.append("  filter: " + ", ".join(f"{k}={g.get(k, 0):g}" for k in (
        "keepalive.sent", "keepalive.answered", "keepalive.failed", "probe.held",
        "probe.passed", "probe.failed", "reconnect_signals", "passthrough")))
    for row in resource_rows(result):
        lines.append(f"  {row[0]}: {row[1]} → {row[2]}")
    lines += [f"  {n}" for n in result.memory_notes]
    lines += [f"  FAIL: {f}" for f in result.failures]
    return "\n".join(lines)


def draw(result: SoakResult, png: Path) -> Path:
    from lab.plot import SoakPanel, plot_soak

    xs = [x.t for x in result.samples]

    def series(f: Callable[[Sample], float]) -> List[float]:
        return [f(x) for x in result.samples]

    def rate(name: str, span: int = 5) -> List[float]:
        """Per second, over the last `span` samples (the sampler's period jitters)."""
        out = []
        for i, x in enumerate(result.samples):
            j = max(0, i - span)
            a = result.samples[j]
            dt = x.t - a.t
            out.append(0.0 if dt <= 0 else
                       max(0.0, (x.guard.get(name, 0) - a.guard.get(name, 0)) / dt))
        return out

    chain_colors = {"plain": "#616161", "guard": "#1565c0"}
    by_chain = {"plain": "plain Envoy", "guard": "with the filter"}
    panels = [
        SoakPanel("filter memory (vm_memory_bytes), KiB",
                  {"with the filter": series(lambda x: x.guard.get("vm_memory_bytes", 0) / 1024)},
                  from_zero=False, colors={"with the filter": chain_colors["guard"]}),
        SoakPanel("Envoy RSS, MiB", {by_chain[c]: series(lambda x, c=c: x.rss_mib[c])
                                     for c in CHAINS}, from_zero=False,
                  colors={by_chain[c]: chain_colors[c] for c in CHAINS}),
        SoakPanel("Envoy open FDs", {by_chain[c]: series(lambda x, c=c: x.fds[c]) for c in CHAINS},
                  colors={by_chain[c]: chain_colors[c] for c in CHAINS}),
        SoakPanel("client connections now", {
            "Envoy, plain": series(lambda x: x.cx_active["plain"]),
            "Envoy, with the filter": series(lambda x: x.cx_active["guard"]),
            "connections gauge (filter)": series(lambda x: x.guard.get("connections", 0))},
            colors={"Envoy, plain": chain_colors["plain"],
                    "Envoy, with the filter": chain_colors["guard"],
                    "connections gauge (filter)": "#ef6c00"}),
        SoakPanel("keepalives per second (5 s average)", {
            "sent": rate("keepalive.sent"), "answered": rate("keepalive.answered")}),
        SoakPanel("filter events (total)", {k: series(lambda x, k=k: x.guard.get(k, 0)) for k in (
            "reconnect_signals", "keepalive.failed", "probe.held", "probe.failed",
            "passthrough")}),
        SoakPanel("client errors (total)", {by_chain[c]: series(lambda x, c=c: x.errors[c])
                                            for c in CHAINS},
                  colors={by_chain[c]: chain_colors[c] for c in CHAINS}),
    ]
    windows = [(c.armed, max(c.disarmed, c.armed + 0.5), c.fault) for c in result.cycles
               if c.disarmed]
    checkpoints = [c.t for c in result.checkpoints]
    g = result.counts["guard"]
    title = (f"Soak, {result.build} build, {'PASS' if not result.failures else 'FAIL'}: "
             f"{result.seconds:.0f} s, {g.connections:,} connections and {g.replies:,} replies "
             f"({g.bytes / 1e6:.1f} MB) verified through the filter")
    errors = Counter(e.chain for e in result.errors)
    note = (f"{time.strftime('%Y-%m-%d')}, tests/lab/soak.py --seconds "
            f"{result.settings.seconds:g}; Envoy --concurrency 2, plain and with the filter "
            f"({json_config(result.settings)}), side by side through one fault-lab path to "
            f"Redis; shaded: a fault armed; dotted: checkpoints (churn stopped, every long-lived "
            f"connection checked and idle). Client errors: plain Envoy {errors['plain']}, with "
            f"the filter {errors['guard']}" + (", each explained by the fault armed at its time." if not result.failures else "."))
    return plot_soak(xs, panels, windows, checkpoints, png, title=title, note=note,
                     fault_titles=FAULT_TITLES)


# -- running it ----------------------------------------------------------------------------
def capture_hello(address: Tuple[str, int]) -> "re.Pattern[bytes]":
    with RawConnection(address) as c:
        return hello_pattern(c.command("HELLO", "3").raw)


def run_soak(module: FilterModule, s: Settings, out_dir: Optional[Path] = None) -> SoakResult:
    """The whole soak for one build; writes soak-<build>.md/.png into out_dir if given."""
    result = SoakResult(module.kind, s)
    t0 = time.monotonic()
    with SoakPath() as path:
        hello = capture_hello(path.address)
        idle = s.envoy_idle_timeout_s
        envoys = {"plain": EnvoyProxy(path.address, concurrency=2, idle_timeout=idle,
                                      name="soak-plain"),
                  "guard": EnvoyProxy(path.address, module=module, concurrency=2,
                                      idle_timeout=idle, plugin_config=s.guard_config(),
                                      name="soak-guard")}
        with envoys["plain"], envoys["guard"]:
            soak = Soak(s, path, envoys, hello, result)
            time.sleep(1.5)  # the filter's first tick reports its memory
            result.start = soak.read_counts()
            say(f"soak of the {module.kind} build for {s.seconds:g}s, cycles of about "
                f"{soak.cycle_estimate():.0f}s; Redis {path.address[0]}:{path.address[1]}; plain Envoy "
                f"{envoys['plain'].address[1]}, with the filter {envoys['guard'].address[1]}")
            try:
                asyncio.run(soak.run())
            finally:
                result.end = settle_end(soak, s.envoy_idle_timeout_s + 10)
                result.guard_stats = envoys["guard"].guard_stats()
                result.envoy_counters = {c: e.stats(ENVOY_COUNTERS) for c, e in envoys.items()}
                result.counts = soak.ledger.counts
                result.errors = soak.ledger.errors
                result.idle_closes = soak.ledger.idle_closes
                result.vm_failures = [ln for ln in envoys["guard"].log_text().splitlines()
                                      if VM_FAILURE.search(ln)]
                for cyc in result.cycles:
                    cyc.peak_memory = max((x.guard.get("vm_memory_bytes", 0)
                                           for x in result.samples if x.cycle == cyc.index),
                                          default=0)
    result.seconds = time.monotonic() - t0
    result.failures = judge(result)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"soak-{module.kind}.md").write_text(report_md(result))
        try:
            draw(result, out_dir / f"soak-{module.kind}.png")
        except ImportError as exc:
            say(f"no picture ({exc}): `make setup-py` installs matplotlib")
    return result


def settle_end(soak: Soak, timeout: float) -> Dict[str, Any]:
    """Every client has closed its connections: wait for the counts to reach zero and the
    FDs their start value (half-closed connections on dead flows last until Envoy's
    idle_timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        view = soak.read_counts()
        done = (view["gauge"] == 0 and all(v == 0 for v in view["cx"].values())
                and view["fds"] == soak.result.start.get("fds"))
        if done or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="how long (default 600)")
    ap.add_argument("--module", type=Path, default=None,
                    help="the built filter: the .wasm (default) or the native .so")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / ".lab",
                    help="directory for soak-<build>.md and .png (default .lab)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("the soak needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    install_sigterm_handler()
    module = FilterModule(args.module or default_wasm_path())
    if not module.exists():
        print(f"{module} does not exist: run `make build` / `make build-native`", file=sys.stderr)
        return 2
    try:
        result = run_soak(module, Settings(seconds=args.seconds, seed=args.seed), args.out)
    except (LabError, FaultError) as exc:
        say(f"harness error: {exc}")
        return 2
    finally:
        left = live_processes()
        stop_all()
        if left:
            say(f"stopped processes left running: {left}")
    print(summary_text(result))
    print(f"wrote {args.out / f'soak-{module.kind}.md'} and .png")
    return 0 if not result.failures else 1


if __name__ == "__main__":
    sys.exit(main())
