"""(d) Reconnect signal: a dead or gone upstream makes the filter close the idle client.

A black-holed Redis (SIGSTOP: sockets stay open, nothing answers) is what a NAT drop or a
half-dead host looks like. With keepalive 1s and ping_timeout 1s, the filter's PING gets no
reply, so it closes the client connection while the client is idle: the pool reconnects before
its next command instead of hanging on it.
"""

from __future__ import annotations

import asyncio
import socket
import time


from lab import RawConnection, make_async_client

GUARD = {"keepalive_interval": "1s", "ping_timeout": "1s"}


def test_frozen_redis_closes_idle_client(lab, module):
    redis = lab.redis(timeout=0)
    envoy = lab.envoy(redis, module=module, plugin_config=GUARD)
    with RawConnection(envoy.address) as c:
        assert c.command("PING").raw == b"+PONG\r\n"
        with redis.frozen():
            waited, got, reset = c.wait_eof(timeout=6)
            print(f"EOF after {waited:.2f}s (reset={reset}, bytes before={got!r})")
            assert got == b"", "the client received bytes before the close"
            # 1 s idle until the PING, 1 s ping_timeout, plus timer granularity.
            assert waited <= 3.5, f"the close took {waited:.2f}s"
            stats = envoy.wait_for_guard_stat("reconnect_signals", lambda v: v >= 1, 2)
            stats = envoy.guard_stats()
            print("filter stats:", stats)
            assert stats["reconnect_signals"] >= 1, stats
            assert stats["keepalive.failed"] >= 1, stats
    # Redis is back: a new connection through the same Envoy works.
    with RawConnection(envoy.address) as c:
        assert c.command("SET", "after", "1").raw == b"+OK\r\n"
        assert c.command("GET", "after").raw == b"$1\r\n1\r\n"


def test_pool_reconnects_after_signal(lab, module):
    """A redis-py RESP2 ConnectionPool checks a connection at checkout: after the signal its
    next command goes out on a fresh connection, with no error and no hang."""
    redis = lab.redis(timeout=0)
    envoy = lab.envoy(redis, module=module, plugin_config=GUARD)

    async def main():
        client = make_async_client(envoy.address, protocol=2, single_connection_client=False,
                                   socket_timeout=3)
        try:
            await client.set("k", "before")
            with redis.frozen():
                await asyncio.sleep(3.5)  # the filter gives up on the PING and closes
            t0 = time.perf_counter()
            value = await client.get("k")
            return value, time.perf_counter() - t0
        finally:
            await client.aclose()

    value, latency = asyncio.run(main())
    print(f"first command after the signal: {value!r} in {latency * 1000:.1f} ms")
    assert value == b"before"
    assert latency < 1.0
    assert envoy.guard_stat("reconnect_signals", 0) >= 1


def test_upstream_close_while_idle_closes_client(lab, module):
    """Redis closes the connection (CLIENT KILL here; `timeout` or a restart in real life)."""
    redis = lab.redis(timeout=0)
    envoy = lab.envoy(redis, module=module, plugin_config={"keepalive_interval": "30s"})
    with RawConnection(envoy.address) as c:
        client_id = c.command("CLIENT", "ID").value
        assert redis.direct().client_kill_filter(_id=client_id) == 1
        waited, got, reset = c.wait_eof(timeout=3)
        print(f"EOF after {waited:.3f}s (reset={reset})")
        assert got == b""
    envoy.wait_for_guard_stat("reconnect_signals", lambda v: v >= 1, 2)


def test_client_close_is_not_a_reconnect_signal(lab, module):
    """A client closing its own connection (close, QUIT, half-close) is not a reconnect
    signal: reconnect_signals counts only the closes the filter causes or relays."""
    redis = lab.redis(timeout=0)
    envoy = lab.envoy(redis, module=module, plugin_config={"keepalive_interval": "30s"})
    c = RawConnection(envoy.address)
    assert c.command("PING").raw == b"+PONG\r\n"
    c.close()
    c = RawConnection(envoy.address)
    assert c.command("QUIT").raw == b"+OK\r\n"
    c.wait_eof(3)
    c.close()
    c = RawConnection(envoy.address)
    assert c.command("PING").raw == b"+PONG\r\n"
    c.sock.shutdown(socket.SHUT_WR)
    c.wait_eof(3)
    c.close()
    envoy.wait_for_guard_stat("connections", lambda v: v == 0, 3)
    stats = envoy.guard_stats()
    print("filter stats:", stats)
    assert stats.get("reconnect_signals", 0) == 0, stats


def test_slow_redis_with_a_command_in_flight_is_not_closed(lab, module):
    """The PING goes unanswered past ping_timeout, but the client has sent a command behind it:
    Redis may only be slow, and closing would lose that command's reply. The filter counts
    keepalive.failed and keeps the connection; when Redis resumes, the client gets its reply."""
    redis = lab.redis(timeout=0)
    envoy = lab.envoy(redis, module=module, plugin_config=GUARD)
    with RawConnection(envoy.address) as c:
        assert c.command("PING").raw == b"+PONG\r\n"
        with redis.frozen():
            time.sleep(1.4)  # idle past keepalive_interval: the filter's PING is out
            c.send_command("SET", "slow", "1")
            time.sleep(2.0)  # well past ping_timeout
        assert c.read_frame(timeout=3).raw == b"+OK\r\n"
        assert c.command("GET", "slow").raw == b"$1\r\n1\r\n"
        stats = envoy.guard_stats()
        print("filter stats:", stats)
        assert stats["keepalive.failed"] >= 1, stats
        assert stats["reconnect_signals"] == 0, stats


def test_redis_down_is_not_a_reconnect_signal(lab, module):
    """Envoy cannot connect to Redis and closes the client: that is a failed connect, not a
    dead idle link, and must not inflate reconnect_signals."""
    redis = lab.redis(timeout=0)
    envoy = lab.envoy(redis, module=module, plugin_config={"keepalive_interval": "30s"})
    redis.stop()
    with RawConnection(envoy.address) as c:
        c.send_command("PING")
        waited, got, reset = c.wait_eof(timeout=5)
        print(f"EOF after {waited:.3f}s (reset={reset})")
        assert got == b""
    time.sleep(0.5)
    stats = envoy.guard_stats()
    assert stats["reconnect_signals"] == 0, stats
