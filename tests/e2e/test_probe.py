"""Probe before stale reuse, on real Envoy + real Redis.

Keepalive off, so the link goes stale; `probe_after: 1s`. A command after a longer silence is
held while a PING goes first, and follows its answer: executed exactly once (INCR counters).
When the link is dead (a frozen Redis), the command is never sent: the client connection is
closed, and after Redis comes back the counter shows the command never ran.
"""

from __future__ import annotations

import statistics
import time

from lab import RawConnection

PROBING = {"keepalive_interval": "0s", "probe_after": "1s", "ping_timeout": "1s"}


def ping_calls(redis) -> int:
    stats = redis.direct().info("commandstats")
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))


def test_probed_command_runs_once_after_the_pong(lab, module):
    redis = lab.redis(timeout=0)
    envoy = lab.envoy(redis, module=module, plugin_config=PROBING)
    direct = redis.direct()
    probed, fresh = [], []
    with RawConnection(envoy.address) as c:
        assert c.command("INCR", "n").raw == b":1\r\n"
        for i in range(3):
            t0 = time.perf_counter()
            assert c.command("INCR", "warm").raw.startswith(b":")
            fresh.append((time.perf_counter() - t0) * 1000)
            time.sleep(1.3)  # longer than probe_after: the next command is probed
            pings_before = ping_calls(redis)
            t0 = time.perf_counter()
            reply = c.command("INCR", "n").raw
            probed.append((time.perf_counter() - t0) * 1000)
            assert reply == f":{i + 2}\r\n".encode(), reply
            assert ping_calls(redis) == pings_before + 1, "no probe PING reached Redis"
        # Nothing the client did not ask for: the connection is quiet now.
        assert c.expect_silence(0.3) == b""
    assert direct.get("n") == b"4", "a probed command ran more or less than once"
    stats = envoy.guard_stats()
    print(f"INCR latency: unprobed p50 {statistics.median(fresh):.2f} ms, "
          f"probed p50 {statistics.median(probed):.2f} ms; stats {stats}")
    assert stats["probe.held"] == 3, stats
    assert stats["probe.passed"] == 3, stats
    assert stats.get("probe.failed", 0) == 0, stats
    assert stats.get("keepalive.sent", 0) == 0, stats


def test_probe_on_a_dead_link_never_sends_the_command(lab, module):
    redis = lab.redis(timeout=0)
    envoy = lab.envoy(redis, module=module, plugin_config=PROBING)
    with RawConnection(envoy.address) as c:
        assert c.command("INCR", "n").raw == b":1\r\n"
        time.sleep(1.3)
        with redis.frozen():
            c.send_command("INCR", "n")
            waited, got, reset = c.wait_eof(timeout=5)
            print(f"closed {waited:.2f}s after the command (reset={reset}, bytes={got!r})")
            assert got == b"", "the client got bytes from a dead link"
            assert waited <= 3.0, f"the close took {waited:.2f}s (ping_timeout is 1s)"
    # Redis is back and has read everything Envoy ever sent it (a second is ample even on a
    # busy machine; too short a wait would pass without looking): the INCR never ran.
    time.sleep(1.0)
    assert redis.direct().get("n") == b"1", "the held command reached Redis"
    stats = envoy.wait_for_guard_stat("probe.failed", lambda v: v >= 1, 3)
    stats = envoy.guard_stats()
    print("filter stats:", stats)
    assert stats["probe.held"] == 1 and stats["probe.failed"] == 1, stats
    assert stats.get("probe.passed", 0) == 0, stats


def test_without_the_filter_the_command_runs_on_a_stale_link(lab):
    """The fault this guards against bites: without the filter the command goes straight onto
    the dead link (and runs when Redis comes back, after the client has given up on it)."""
    redis = lab.redis(timeout=0)
    envoy = lab.envoy(redis)
    with RawConnection(envoy.address) as c:
        assert c.command("INCR", "n").raw == b":1\r\n"
        time.sleep(1.3)
        with redis.frozen():
            c.send_command("INCR", "n")
            got = c.expect_silence(1.5)
            assert got == b"", "a frozen Redis answered"
        # The client has timed out on its side; Redis then runs the command anyway.
        deadline = time.monotonic() + 5
        while redis.direct().get("n") != b"2" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert redis.direct().get("n") == b"2"
