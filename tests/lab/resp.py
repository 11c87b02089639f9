"""A plain-socket RESP2/RESP3 client for byte-exact checks (what exactly reaches the client).

RespReader is an incremental frame splitter/parser used as a test oracle; RawConnection wraps a
blocking socket with timeouts: read_frame(), expect_silence(), wait_eof().
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

from .procs import is_lab_address

Arg = Union[str, bytes, int, float]


def encode_command(*args: Arg) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, (int, float)):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


@dataclass
class Frame:
    kind: str  # the RESP type byte: + - : $ * _ , # ! = ( % ~ > |
    value: object
    raw: bytes = field(repr=False)

    def py(self):
        """A plain Python value (aggregates as lists; maps as lists of pairs)."""
        if isinstance(self.value, list):
            return [f.py() for f in self.value]
        return self.value

    @property
    def is_push(self) -> bool:
        return self.kind == ">"


class Incomplete(Exception):
    pass


class ProtocolError(Exception):
    pass


_AGG = {"*", "~", ">"}
_MAP = {"%", "|"}
_BLOB = {"$", "!", "="}
_LINE = {"+", "-", ":", ",", "(", "#", "_"}


def _line(buf: bytes, pos: int) -> Tuple[bytes, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete
    return buf[pos:end], end + 2


def parse_frame(buf: bytes, pos: int = 0, depth: int = 0) -> Tuple[Frame, int]:
    """Parse one frame at buf[pos:]; raise Incomplete if it is not all there yet."""
    if depth > 64:
        raise ProtocolError("nesting too deep")
    if pos >= len(buf):
        raise Incomplete
    kind = chr(buf[pos])
    body, nxt = _line(buf, pos + 1)
    if kind in _LINE:
        if kind == ":":
            value: object = int(body)
        elif kind == "_":
            value = None
        elif kind == "#":
            value = body == b"t"
        else:
            value = body.decode(errors="replace") if kind in "+-" else body
        return Frame(kind, value, buf[pos:nxt]), nxt
    if kind in _BLOB:
        n = int(body)
        if n < 0:
            return Frame(kind, None, buf[pos:nxt]), nxt
        end = nxt + n
        if len(buf) < end + 2:
            raise Incomplete
        if buf[end:end + 2] != b"\r\n":
            raise ProtocolError(f"bad blob terminator at {end}")
        return Frame(kind, buf[nxt:end], buf[pos:end + 2]), end + 2
    if kind in _AGG or kind in _MAP:
        n = int(body)
        if n < 0:
            return Frame(kind, None, buf[pos:nxt]), nxt
        count = n * 2 if kind in _MAP else n
        items: List[Frame] = []
        p = nxt
        for _ in range(count):
            f, p = parse_frame(buf, p, depth + 1)
            items.append(f)
        if kind == "|":  # attribute: comes before the real reply; keep both
            f, p = parse_frame(buf, p, depth + 1)
            items.append(f)
        return Frame(kind, items, buf[pos:p]), p
    raise ProtocolError(f"unknown RESP type byte {kind!r} at {pos}: {buf[pos:pos + 40]!r}")


class RespReader:
    """Accumulates bytes and splits them into complete frames."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> None:
        self.buf += data

    def pop(self) -> Optional[Frame]:
        try:
            frame, used = parse_frame(self.buf)
        except Incomplete:
            return None
        self.buf = self.buf[used:]
        return frame


class EOFReached(Exception):
    """The peer closed the connection (FIN, or RST when reset=True)."""

    def __init__(self, message: str, reset: bool = False):
        super().__init__(message)
        self.reset = reset


class RawConnection:
    """A blocking TCP client to 127.0.0.1 (or a fault-lab address) that speaks RESP by hand."""

    def __init__(self, address: Tuple[str, int], timeout: float = 5.0):
        host, port = address
        if not is_lab_address(host):
            raise ValueError("loopback or fault-lab addresses only")
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = RespReader()
        self.received = bytearray()  # everything ever received, for byte-exact asserts

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_command(self, *args: Arg) -> None:
        self.send(encode_command(*args))

    def _recv(self, timeout: float) -> bytes:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError as exc:
            raise EOFReached(f"connection reset: {exc}", reset=True) from exc
        if not data:
            raise EOFReached("connection closed by peer (EOF)")
        self.received += data
        return data

    def read_frame(self, timeout: float = 5.0) -> Frame:
        deadline = time.monotonic() + timeout
        while True:
            f = self.reader.pop()
            if f is not None:
                return f
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete frame within {timeout}s; "
                                   f"partial={self.reader.buf[:200]!r}")
            try:
                self.reader.feed(self._recv(left))
            except socket.timeout:
                continue

    def read_frames(self, n: int, timeout: float = 5.0) -> List[Frame]:
        deadline = time.monotonic() + timeout
        return [self.read_frame(max(0.001, deadline - time.monotonic())) for _ in range(n)]

    def command(self, *args: Arg, timeout: float = 5.0) -> Frame:
        self.send_command(*args)
        return self.read_frame(timeout)

    def expect_silence(self, duration: float) -> bytes:
        """Read for `duration` seconds; return whatever arrived (a test expects b'')."""
        got = bytearray(self.reader.buf)
        self.reader.buf = b""
        deadline = time.monotonic() + duration
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(got)
            try:
                got += self._recv(left)
            except socket.timeout:
                continue

    def wait_eof(self, timeout: float) -> Tuple[float, bytes, bool]:
        """Wait for the peer to close: (seconds waited, bytes that arrived first, was_reset)."""
        t0 = time.monotonic()
        got = bytearray()
        while True:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                raise TimeoutError(f"connection still open after {timeout}s (got {bytes(got)!r})")
            try:
                got += self._recv(left)
            except socket.timeout:
                continue
            except EOFReached as eof:
                return time.monotonic() - t0, bytes(got), eof.reset

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ExactClient:
    """A RawConnection that keeps every frame it asked for (replies, and messages it read), to
    check at the end that it received exactly those bytes and nothing else."""

    def __init__(self, address: Tuple[str, int], label: str, timeout: float = 5.0):
        self.label = label
        self.conn = RawConnection(address, timeout=timeout)
        self.frames: List[bytes] = []

    def ask(self, *args: Arg) -> Frame:
        self.conn.send_command(*args)
        return self.read()

    def read(self) -> Frame:
        frame = self.conn.read_frame()
        self.frames.append(frame.raw)
        return frame

    def ask_ok(self, *args: Arg) -> None:
        raw = self.ask(*args).raw
        assert raw == b"+OK\r\n", f"{self.label}: {args[0]!r} → {raw!r}"

    def set_then_get(self, value: str, key: Optional[str] = None) -> None:
        """SET then GET, checking both replies (the key: one per label unless given)."""
        key = key or f"exact:{self.label}"
        self.ask_ok("SET", key, value)
        got = self.ask("GET", key).raw
        assert got == b"$%d\r\n%s\r\n" % (len(value), value.encode()), f"{self.label}: {got!r}"

    def assert_exact(self, quiet_s: float = 0.3) -> None:
        """Nothing more arrives within quiet_s, and all that did is the frames it asked for."""
        extra = self.conn.expect_silence(quiet_s)
        assert extra == b"", f"{self.label}: stray bytes {extra!r}"
        got, wanted = bytes(self.conn.received), b"".join(self.frames)
        assert got == wanted, f"{self.label}: received {got!r}, asked for {wanted!r}"

    def close(self) -> None:
        self.conn.close()
