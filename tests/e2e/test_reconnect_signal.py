"""(d) Reconnect signal: a dead or gone upstream makes the filter close the idle client.

A black-holed Redis (SIGSTOP: sockets stay open, nothing answers) is what a NAT drop or a
half-dead host looks like. With keepalive 1s and ping_timeout 1s, the filter's PING gets no
reply, so it closes the client connection while the client is idle: the pool reconnects before
its next command instead of hanging on it.

The tests of what the filter does about a dead link run plain Envoy beside it on the same Redis
(a control): there the idle connection stays open, and the command hangs or the pool keeps its
old connection, so the filter's behaviour cannot pass by accident.
"""

from __future__ import annotations

import asyncio
import socket
import time


from lab import RawConnection, make_async_client
from lab.resp import EOFReached

GUARD = {"keepalive_interval": "1s", "ping_timeout": "1s"}


def test_frozen_redis_closes_idle_client(lab, module):
    redis = lab.redis(timeout=0)
    envoy = lab.envoy(redis, module=module, plugin_config=GUARD)
    plain = lab.envoy(redis, name="envoy-plain")
    with RawConnection(envoy.address) as c, RawConnection(plain.address) as p:
        assert p.command("PING").raw == b"+PONG\r\n"
        assert c.command("PING").raw == b"+PONG\r\n"
        t_reply = time.monotonic()  # the filter's clock starts at the reply, before freeze()
        with redis.frozen():
            # The control first: through plain Envoy a command hangs on the frozen Redis.
            p.send_command("PING")
            try:
                silent = p.expect_silence(1.0)
            except EOFReached as eof:
                raise AssertionError(f"plain Envoy closed the connection: {eof}") from eof
            assert silent == b"", "a frozen Redis answered through plain Envoy"
            _, got, reset = c.wait_eof(timeout=8)
            waited = time.monotonic() - t_reply
            print(f"EOF {waited:.2f}s after the last reply (reset={reset}, bytes before={got!r})")
            assert got == b"", "the client received bytes before the close"
            # 1 s idle until the PING, 1 s ping_timeout, plus timer granularity and a busy
            # machine's room; a later close would be a second keepalive round's.
            assert waited <= 4.5, f"the close took {waited:.2f}s"
            # Plain Envoy still holds its connection open (only the filter closes).
            try:
                assert p.expect_silence(0.1) == b""
            except EOFReached as eof:
                raise AssertionError(f"plain Envoy closed the idle connection: {eof}") from eof
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
    next command goes out on a fresh connection (a new Redis client id), with no error and no
    hang. The control, a pool through plain Envoy beside it, keeps its old connection."""
    redis = lab.redis(timeout=0)
    envoys = {"guard": lab.envoy(redis, module=module, plugin_config=GUARD),
              "plain": lab.envoy(redis, name="envoy-plain")}

    async def main():
        clients = {name: make_async_client(e.address, protocol=2, single_connection_client=False,
                                           socket_timeout=3) for name, e in envoys.items()}
        out = {}
        try:
            for name, client in clients.items():
                await client.set(f"k:{name}", "before")
                out[name] = {"id_before": await client.client_id()}
            with redis.frozen():
                await asyncio.sleep(3.5)  # the filter gives up on the PING and closes
            for name, client in clients.items():
                t0 = time.perf_counter()
                out[name]["value"] = await client.get(f"k:{name}")
                out[name]["latency"] = time.perf_counter() - t0
                out[name]["id_after"] = await client.client_id()
            return out
        finally:
            for client in clients.values():
                await client.aclose()

    out = asyncio.run(main())
    print("first command after the freeze:", out)
    guard, plain = out["guard"], out["plain"]
    assert guard["value"] == b"before"
    assert guard["id_after"] != guard["id_before"], "the pool did not reconnect"
    assert guard["latency"] < 2.0, "the command waited (the socket timeout is 3 s)"
    assert envoys["guard"].guard_stat("reconnect_signals", 0) >= 1
    assert plain["value"] == b"before"
    assert plain["id_after"] == plain["id_before"], "the pool reconnected without the filter"


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
    """The PING goes unanswered past ping_timeout, but the client has sent a command behind it
    that is too large to hold (over 64 KiB: a small one is held, and never sent if the PING
    fails, test_protocol_edges.py): Redis may only be slow, and closing would lose that
    command's reply. The filter counts keepalive.failed and keeps the connection; when Redis
    resumes, the client gets its reply."""
    redis = lab.redis(timeout=0)
    # ping_timeout 3 s: room to send the command after the PING is out and before it times out.
    envoy = lab.envoy(redis, module=module,
                      plugin_config={"keepalive_interval": "1s", "ping_timeout": "3s"})
    with RawConnection(envoy.address) as c:
        assert c.command("PING").raw == b"+PONG\r\n"
        with redis.frozen():
            # Idle past keepalive_interval: wait until the filter's PING is out (a fixed sleep
            # would race the filter's timer on a busy machine).
            envoy.wait_for_guard_stat("keepalive.sent", lambda v: v >= 1, 5)
            c.send_command("SET", "slow", "v" * 100_000)
            envoy.wait_for_guard_stat("keepalive.failed", lambda v: v >= 1, 6)
        assert c.read_frame(timeout=3).raw == b"+OK\r\n"
        assert c.command("STRLEN", "slow").raw == b":100000\r\n"
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
