"""A throw-away redis-server with its own port, directory and config: on 127.0.0.1, or on a
fault-lab address inside a network namespace (tests/lab/faults.py)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator, Mapping, Optional

from .procs import LOOPBACK, LabError, ManagedProcess, free_port, is_lab_address, unique_workdir

RESERVED_PORTS = {6379}  # the system redis may run there: never touch it


class RedisStartError(LabError):
    pass


def redis_server_binary() -> str:
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(path).exists():
        raise RedisStartError("redis-server not found: run `make setup-apt`")
    return path


class RedisServer:
    """redis-server with `timeout`, no persistence, loopback only.

    >>> with RedisServer(timeout=2) as redis:
    ...     redis.direct().ping()
    """

    def __init__(self, *, timeout: int = 0, port: Optional[int] = None,
                 extra_config: Optional[Mapping[str, str]] = None, name: str = "redis",
                 bind: str = LOOPBACK, netns: Optional[str] = None):
        """bind/netns: run inside that network namespace on that (fault-lab) address, so the
        path from Envoy to Redis can cross a router namespace (faults.py)."""
        if not is_lab_address(bind):
            raise RedisStartError(f"the lab binds Redis only to lab addresses, not {bind}")
        self.timeout = timeout
        self.requested_port = port
        self.extra_config = dict(extra_config or {})
        self.name = name
        self.host = bind
        self.netns = netns
        self.port: Optional[int] = None
        self.workdir: Optional[Path] = None
        self.process: Optional[ManagedProcess] = None

    # -- lifecycle -------------------------------------------------------------------------
    def _config_text(self, port: int) -> str:
        lines = {
            "bind": self.host,
            "port": str(port),
            # Inside its own namespace Redis is reachable only through the lab's router.
            "protected-mode": "yes" if self.netns is None else "no",
            "daemonize": "no",
            "timeout": str(self.timeout),
            "save": '""',
            "appendonly": "no",
            "dir": str(self.workdir),
            "logfile": '""',  # stdout, which ManagedProcess sends to redis.log
            "loglevel": "notice",
            "databases": "1",
        }
        lines.update(self.extra_config)
        return "".join(f"{k} {v}\n" for k, v in lines.items())

    def start(self, ready_timeout: float = 10.0) -> "RedisServer":
        self.workdir = unique_workdir(self.name)
        last_error = ""
        for _attempt in range(5):
            port = self.requested_port or free_port()
            if port in RESERVED_PORTS:
                continue
            conf = self.workdir / "redis.conf"
            conf.write_text(self._config_text(port))
            argv = [redis_server_binary(), str(conf)]
            if self.netns is not None:
                argv = ["ip", "netns", "exec", self.netns] + argv  # execs: same pid
            proc = ManagedProcess(f"{self.name}:{port}", argv,
                                  self.workdir / "redis.log", cwd=self.workdir).start()
            self.process, self.port = proc, port
            if self._wait_ready(ready_timeout):
                return self
            last_error = proc.log_text()[-2000:]
            proc.stop()
            if self.requested_port:
                break
        raise RedisStartError(f"redis-server did not start; log tail:\n{last_error}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.alive():
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    reply = s.recv(64)
                    if reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def restart(self, ready_timeout: float = 10.0) -> "RedisServer":
        """Stop (SIGTERM: Redis closes every client) and start again on the same address and
        port, with an empty dataset: a Redis restart as its clients see it."""
        port = self.port
        self.stop()
        self.requested_port = port
        return self.start(ready_timeout)

    def __enter__(self) -> "RedisServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- fault injection -------------------------------------------------------------------
    def freeze(self) -> None:
        """SIGSTOP: Redis keeps every socket open but answers nothing (a black hole)."""
        self.process.freeze()

    def unfreeze(self) -> None:
        self.process.unfreeze()

    @contextlib.contextmanager
    def frozen(self) -> Iterator["RedisServer"]:
        self.freeze()
        try:
            yield self
        finally:
            self.unfreeze()

    # -- access ----------------------------------------------------------------------------
    @property
    def address(self) -> "tuple[str, int]":
        return (self.host, self.port)

    def direct(self, **kwargs):
        """A synchronous redis-py client straight to this Redis (bypassing Envoy)."""
        import redis  # local import: the lab's process code does not need redis-py

        kwargs.setdefault("socket_timeout", 5)
        if "requirepass" in self.extra_config:
            kwargs.setdefault("password", self.extra_config["requirepass"])
        return redis.Redis(host=self.host, port=self.port, **kwargs)

    def log_text(self) -> str:
        return self.process.log_text() if self.process else ""

    def __repr__(self) -> str:
        return f"<RedisServer {self.host}:{self.port} timeout={self.timeout} {self.process!r}>"
