"""What a Redis sees of its clients, over time: every command (MONITOR) and when each client
connection opens and closes (CLIENT LIST, polled), recorded in a thread for the demo's picture.

Redis's side is where the filter's keepalives are certain: a PING in MONITOR reached Redis, and
the filter is the only sender of PING in the demo (redis-py's health checks are off). Both
watch connections are exempt from Redis `timeout`: MONITOR clients are never closed for being
idle, and the poll connection is never idle.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .procs import LabError, is_lab_address
from .resp import RawConnection

# +1764590000.123456 [0 127.0.0.1:54321] "SET" "key" "value"
_MONITOR_LINE = re.compile(r'^\+(\d+\.\d+) \[\d+ ([^\]]+)\] (.*)$')
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class SeenCommand:
    at: float        # Redis's clock (epoch seconds)
    args: List[str]  # as MONITOR prints them (escapes kept)

    @property
    def name(self) -> str:
        return self.args[0].upper() if self.args else ""


@dataclass
class SeenClient:
    """One client connection of Redis: its address ("ip:port") and life as Redis saw it."""
    addr: str
    opened: float                   # first seen (CLIENT LIST or MONITOR), epoch seconds
    closed: Optional[float] = None  # first poll that no longer listed it
    commands: List[SeenCommand] = field(default_factory=list)


class RedisWatch:
    """MONITOR and a CLIENT LIST poll every `poll_s` seconds, both straight to Redis.

    >>> with RedisWatch(redis.address) as watch:
    ...     ...  # run clients
    >>> watch.clients  # [SeenClient], the watch's own connections left out
    """

    def __init__(self, address: Tuple[str, int], poll_s: float = 0.1):
        if not is_lab_address(address[0]):
            raise LabError(f"the lab only watches lab addresses, not {address[0]}")
        self.address = address
        self.poll_s = poll_s
        self.clients: List[SeenClient] = []  # in the order Redis first showed them
        self._open: Dict[str, SeenClient] = {}
        self._last_closed: Dict[str, SeenClient] = {}
        self._own: set = set()
        self._monitor: Optional[socket.socket] = None
        self._poll: Optional[RawConnection] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def __enter__(self) -> "RedisWatch":
        self._monitor = socket.create_connection(self.address, timeout=5)
        self._monitor.sendall(b"MONITOR\r\n")
        if not self._read_line_blocking().startswith(b"+OK"):
            raise LabError("MONITOR was refused")
        self._poll = RawConnection(self.address)
        for sock in (self._monitor, self._poll.sock):
            host, port = sock.getsockname()[:2]
            self._own.add(f"{host}:{port}")
        self._poll_clients()
        self._thread = threading.Thread(target=self._run, name="redis-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for closer in (self._monitor, self._poll):
            if closer is not None:
                closer.close()
        if self._error is not None and exc[0] is None:
            raise LabError(f"the Redis watch failed: {self._error!r}")

    # -- the thread ------------------------------------------------------------------------
    def _read_line_blocking(self) -> bytes:
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = self._monitor.recv(1)
            if not chunk:
                raise LabError("Redis closed the MONITOR connection")
            buf += chunk
        return buf

    def _run(self) -> None:
        pending = b""
        next_poll = time.monotonic() + self.poll_s
        try:
            while not self._stop.is_set():
                wait = max(0.0, next_poll - time.monotonic())
                ready, _, _ = select.select([self._monitor], [], [], wait)
                if ready:
                    data = self._monitor.recv(65536)
                    if not data:
                        raise LabError("Redis closed the MONITOR connection")
                    pending += data
                    *lines, pending = pending.split(b"\r\n")
                    for line in lines:
                        self._on_monitor_line(line.decode(errors="replace"))
                if time.monotonic() >= next_poll:
                    self._poll_clients()
                    next_poll = time.monotonic() + self.poll_s
        except BaseException as exc:  # noqa: BLE001 - reported by __exit__
            self._error = exc

    def _client(self, addr: str, at: float) -> SeenClient:
        """The connection behind `addr` at time `at` (a closed one's port may come back)."""
        client = self._open.get(addr)
        if client is None:
            # A command read after the poll that saw its connection gone belongs to that one.
            last = self._last_closed.get(addr)
            if last is not None and last.closed is not None and at <= last.closed:
                return last
            client = self._open[addr] = SeenClient(addr, at)
            self.clients.append(client)
        return client

    def _on_monitor_line(self, line: str) -> None:
        m = _MONITOR_LINE.match(line)
        if not m:
            return
        at, addr, rest = float(m.group(1)), m.group(2), m.group(3)
        if addr in self._own or not re.match(r"^[\d.]+:\d+$", addr):
            return
        client = self._client(addr, at)
        client.opened = min(client.opened, at)
        client.commands.append(SeenCommand(at, _ARG.findall(rest)))

    def _poll_clients(self) -> None:
        text = self._poll.command("CLIENT", "LIST").py()
        now = time.time()
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        listed = set()
        for line in str(text).splitlines():
            fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            addr = fields.get("addr", "")
            if addr and addr not in self._own:
                listed.add(addr)
                self._client(addr, now)
        for addr in [a for a in self._open if a not in listed]:
            client = self._open.pop(addr)
            client.closed = now
            self._last_closed[addr] = client
