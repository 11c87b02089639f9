"""The lab itself: processes start on loopback, can be frozen, and are always cleaned up."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
import time

import pytest

from lab import RawConnection, live_processes
from lab.procs import REPO_ROOT

PR_SET_CHILD_SUBREAPER = 36


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan waits for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_plain_envoy_proxies_and_stops(lab):
    redis = lab.redis()
    envoy = lab.envoy(redis, concurrency=2)
    assert redis.port != 6379
    with RawConnection(envoy.address) as c:
        assert c.command("PING").raw == b"+PONG\r\n"
    pids = [redis.process.pid, envoy.process.pid]
    envoy.stop()
    redis.stop()
    assert not envoy.alive()
    for pid in pids:
        assert not _running(pid)


def test_two_envoys_side_by_side(lab):
    redis = lab.redis()
    a, b = lab.envoy(redis, name="envoy-a"), lab.envoy(redis, name="envoy-b")
    assert a.base_id != b.base_id and a.listener_port != b.listener_port
    for e in (a, b):
        with RawConnection(e.address) as c:
            assert c.command("PING").raw == b"+PONG\r\n"


def test_freeze_is_a_black_hole(lab):
    redis = lab.redis()
    with RawConnection(redis.address) as c:
        with redis.frozen():
            c.send_command("PING")
            assert c.expect_silence(0.5) == b""
        assert c.read_frame().raw == b"+PONG\r\n"


def test_no_leftovers_when_the_script_dies(tmp_path):
    """A script that starts Redis + Envoy and then raises, and one that is SIGKILLed: nothing
    it started survives it."""
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, signal
        sys.path.insert(0, {str(REPO_ROOT / 'tests')!r})
        from lab import RedisServer, EnvoyProxy
        r = RedisServer().start()
        e = EnvoyProxy(r).start()
        print(r.process.pid, e.process.pid, flush=True)
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("boom")
    """))
    # Become a subreaper so the orphans of the SIGKILLed script are reparented to this process,
    # which can then watch them die and reap them (no zombies left for `pgrep`).
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        for mode in ("raise", "kill"):
            proc = subprocess.run([sys.executable, str(script), mode], capture_output=True,
                                  text=True, timeout=60)
            pids = [int(x) for x in proc.stdout.split()]
            assert len(pids) == 2, proc.stdout + proc.stderr
            for pid in pids:
                deadline = time.monotonic() + 5
                while _running(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _running(pid):
                    os.kill(pid, 9)
                    pytest.fail(f"{mode}: process {pid} outlived its script")
                try:
                    os.waitpid(pid, os.WNOHANG if mode == "raise" else 0)
                except ChildProcessError:
                    pass  # already reaped by its own parent
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def test_nothing_running_between_tests():
    assert live_processes() == []
