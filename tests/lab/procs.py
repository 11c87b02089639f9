"""Process bookkeeping for the lab: every child is registered and always stopped.

Three layers make sure nothing is left running:
1. each server object is a context manager that stops its process on exit;
2. an atexit hook stops whatever is still registered (also after a failed test or Ctrl-C);
3. children are started with PR_SET_PDEATHSIG=SIGKILL, so the kernel kills them if the Python
   process itself is killed (SIGKILL, OOM) before 1 or 2 can run.
Children run in their own session, so a Ctrl-C in the terminal reaches only Python, which then
stops them in order.
"""

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
# Private addresses of the fault lab's network namespaces (tests/lab/faults.py): the only
# non-loopback addresses the lab may connect to. Nothing in this range leaves the machine.
LAB_NETWORK = ipaddress.ip_network("10.199.0.0/16")


def is_lab_address(host: str) -> bool:
    """127.0.0.1, or an address of a fault-lab namespace (never anything off the machine)."""
    if host == LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host) in LAB_NETWORK
    except ValueError:
        return False

_PR_SET_PDEATHSIG = 1
_live: "set[ManagedProcess]" = set()
_live_lock = threading.Lock()
_lab_dir: Optional[Path] = None


class LabError(RuntimeError):
    """A lab process could not be started or did not behave."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lab_dir() -> Path:
    """This run's work directory: <repo>/.lab/run-<pid>/ (git-ignored; `make clean` removes it).

    Directories of earlier runs whose process is gone are removed the first time this is called,
    so logs of the last run stay around for a post-mortem but do not pile up.
    """
    global _lab_dir
    if _lab_dir is None:
        base = Path(os.environ.get("LAB_DIR", REPO_ROOT / ".lab"))
        base.mkdir(parents=True, exist_ok=True)
        for old in base.glob("run-*"):
            try:
                pid = int(old.name.split("-", 1)[1])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(old, ignore_errors=True)
        _lab_dir = base / f"run-{os.getpid()}"
        _lab_dir.mkdir(exist_ok=True)
    return _lab_dir


_name_counter = 0
_name_lock = threading.Lock()


def unique_workdir(prefix: str) -> Path:
    """A fresh directory under lab_dir() for one process (its config, data and log)."""
    global _name_counter
    with _name_lock:
        _name_counter += 1
        n = _name_counter
    d = lab_dir() / f"{prefix}-{n}"
    d.mkdir(parents=True, exist_ok=False)
    return d


def next_instance_number() -> int:
    global _name_counter
    with _name_lock:
        _name_counter += 1
        return _name_counter


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a bind race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05,
               what: str = "condition"):
    """Poll predicate until it returns something truthy; return it, or raise LabError."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polled conditions may fail while starting
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise LabError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)


class ManagedProcess:
    """A child process whose stdout+stderr go to a log file and which is always stopped."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, cwd: Optional[Path] = None,
                 env: Optional[Mapping[str, str]] = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.cwd = cwd
        # Added to this process's environment for the child.
        self.env = dict(env or {})
        self.popen: Optional[subprocess.Popen] = None
        self.frozen = False

    def start(self) -> "ManagedProcess":
        log = open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env={**os.environ, **self.env} if self.env else None,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        with _live_lock:
            _live.add(self)
        return self

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise LabError(f"{self.name} was never started")
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> Optional[int]:
        return None if self.popen is None else self.popen.poll()

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing (a black hole)."""
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True

    def unfreeze(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self, timeout: float = 5.0) -> None:
        """SIGCONT (in case it is frozen), SIGTERM, then SIGKILL after `timeout` seconds."""
        p = self.popen
        if p is None:
            return
        try:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                    p.terminate()
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        finally:
            self.frozen = False
            with _live_lock:
                _live.discard(self)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited({self.returncode()})"
        pid = self.popen.pid if self.popen else None
        return f"<{self.name} pid={pid} {state}>"


def live_processes() -> "list[ManagedProcess]":
    with _live_lock:
        return [p for p in _live if p.alive()]


def stop_all() -> None:
    with _live_lock:
        procs = list(_live)
    for p in procs:
        try:
            p.stop(timeout=3)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(stop_all)


def _sigterm_to_exit(signum, frame):  # noqa: ARG001
    raise SystemExit(128 + signum)


def install_sigterm_handler() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so context managers and atexit run (demo, scripts)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_to_exit)
        signal.signal(signal.SIGHUP, _sigterm_to_exit)
