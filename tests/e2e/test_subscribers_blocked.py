"""(b) Subscribers and blocked clients behind tcp_proxy idle_timeout 2s.

Redis `timeout` does not apply to subscribers or blocked clients, but Envoy's tcp_proxy
idle_timeout (like a NAT) kills them like any idle connection. The filter keeps them alive, and
the client must not see any extra frame: no `pong` in a RESP2 subscriber, no +PONG after a
BLPOP reply, replies in order.

The filter runs with ping_timeout 1s here on purpose: a blocked connection cannot answer a PING
until its BLPOP returns, so a filter that waited for that reply would close it after 2 s.
"""

from __future__ import annotations

import asyncio
import threading
import time


from lab import RawConnection, make_async_client

IDLE_TIMEOUT = "2s"  # tcp_proxy idle_timeout
IDLE_S = 4.0         # how long subscribers / BLPOP wait before the event
GUARD = {"keepalive_interval": "1s", "ping_timeout": "1s"}


def _envoy(lab, with_filter, module=None):
    redis = lab.redis(timeout=0)
    if with_filter:
        envoy = lab.envoy(redis, module=module, plugin_config=GUARD, idle_timeout=IDLE_TIMEOUT)
    else:
        envoy = lab.envoy(redis, idle_timeout=IDLE_TIMEOUT)
    return redis, envoy


# --------------------------------------------------------------------------------------------
# Pub/Sub
# --------------------------------------------------------------------------------------------

async def _redis_py_subscriber(address, protocol, channel, received, errors, subscribed):
    """A typical subscriber loop: read messages until an error ends it (retries are off)."""
    client = make_async_client(address, protocol=protocol, single_connection_client=False,
                               socket_timeout=None)
    ps = client.pubsub()
    try:
        await ps.subscribe(channel)
        while True:
            msg = await ps.get_message(timeout=None)
            if msg is not None:
                received.append(msg)
                if msg["type"] == "subscribe":
                    subscribed.set()
    except asyncio.CancelledError:
        pass
    except Exception as exc:  # noqa: BLE001 - recorded and asserted on
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        try:
            await ps.aclose()
            await client.aclose()
        except Exception:  # noqa: BLE001
            pass


def _raw_subscriber(address, protocol, channel, out, subscribed: threading.Event,
                    published: threading.Event):
    """A plain-socket subscriber recording every byte it receives."""
    try:
        with RawConnection(address) as c:
            if protocol == 3:
                hello = c.command("HELLO", "3")
                assert hello.kind == "%", hello
                c.received.clear()
            c.send_command("SUBSCRIBE", channel)
            c.read_frame()
            subscribed.set()
            published.wait(IDLE_S + 10)
            c.expect_silence(1.5)  # the message, and anything stray, arrives in this window
            out["bytes"] = bytes(c.received)
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{type(exc).__name__}: {exc}"


def _expected_raw(protocol, channel: str, message: str) -> bytes:
    ch, msg = channel.encode(), message.encode()
    head = b">3\r\n" if protocol == 3 else b"*3\r\n"
    sub = head + b"$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(ch), ch)
    return sub + head + b"$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(ch), ch, len(msg), msg)


async def _pubsub_scenario(redis, envoy):
    """Four subscribers (redis-py RESP2/RESP3, raw RESP2/RESP3) idle IDLE_S, then a publish."""
    results = {}
    tasks, events = [], []
    for protocol in (2, 3):
        channel = f"news-py{protocol}"
        received, errors, subscribed = [], [], asyncio.Event()
        results[("py", protocol)] = (channel, received, errors)
        tasks.append(asyncio.create_task(_redis_py_subscriber(
            envoy.address, protocol, channel, received, errors, subscribed)))
        events.append(subscribed)
    raw_threads, published = [], threading.Event()
    for protocol in (2, 3):
        channel, out, subscribed = f"news-raw{protocol}", {}, threading.Event()
        results[("raw", protocol)] = (channel, out, None)
        t = threading.Thread(target=_raw_subscriber, daemon=True,
                             args=(envoy.address, protocol, channel, out, subscribed, published))
        t.start()
        raw_threads.append((t, subscribed))
    for e in events:
        await asyncio.wait_for(e.wait(), 5)
    for _, s in raw_threads:
        assert s.wait(5), "raw subscriber did not subscribe"

    await asyncio.sleep(IDLE_S)  # everyone idle: tcp_proxy idle_timeout is 2 s
    idle_stats = envoy.guard_stats() if envoy.with_filter else {}

    direct = redis.direct()
    receivers = {k: direct.publish(ch, "hello") for k, (ch, _, _) in results.items()}
    published.set()
    await asyncio.sleep(1.5)  # delivery, plus one more keepalive interval for stray frames
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for t, _ in raw_threads:
        t.join(10)
    return results, receivers, idle_stats


def test_subscribers_without_filter_are_lost(lab):
    redis, envoy = _envoy(lab, with_filter=False)
    results, receivers, _ = asyncio.run(_pubsub_scenario(redis, envoy))
    print("receivers per publish:", receivers)
    for protocol in (2, 3):
        channel, received, errors = results[("py", protocol)]
        print(f"redis-py RESP{protocol}: received={received} errors={errors}")
        assert errors, f"RESP{protocol} subscriber survived a 4 s idle behind idle_timeout 2s"
        assert not any(m["type"] == "message" for m in received), received
        channel, out, _ = results[("raw", protocol)]
        print(f"raw RESP{protocol}: {out}")
        assert receivers[("raw", protocol)] == 0, "Redis still had the raw subscriber"
        assert b"hello" not in out.get("bytes", b""), out
    assert envoy.stats()["tcp.redis.idle_timeout"] >= 4


def test_subscribers_with_filter_get_exactly_their_messages(lab, module):
    redis, envoy = _envoy(lab, with_filter=True, module=module)
    results, receivers, idle_stats = asyncio.run(_pubsub_scenario(redis, envoy))
    print("receivers per publish:", receivers)
    print("filter stats after the idle spell:", idle_stats)
    assert idle_stats.get("reconnect_signals", 0) == 0, idle_stats
    assert idle_stats.get("connections") == 4, idle_stats
    for protocol in (2, 3):
        channel, received, errors = results[("py", protocol)]
        print(f"redis-py RESP{protocol}: received={received} errors={errors}")
        assert not errors, errors
        assert received == [
            {"type": "subscribe", "pattern": None, "channel": channel.encode(), "data": 1},
            {"type": "message", "pattern": None, "channel": channel.encode(), "data": b"hello"},
        ], f"RESP{protocol} subscriber saw extra or missing frames"
        channel, out, _ = results[("raw", protocol)]
        assert "error" not in out, out
        assert out["bytes"] == _expected_raw(protocol, channel, "hello"), (
            f"raw RESP{protocol} subscriber bytes differ:\n{out['bytes']!r}")
    assert all(n == 1 for n in receivers.values()), receivers
    assert envoy.stats()["tcp.redis.idle_timeout"] == 0
    stats = envoy.guard_stats()
    print("filter stats:", stats)
    assert stats["keepalive.sent"] >= 4 * 2, stats
    assert stats.get("keepalive.failed", 0) == 0, stats


# --------------------------------------------------------------------------------------------
# BLPOP
# --------------------------------------------------------------------------------------------

async def _redis_py_blpop(address, protocol, key):
    """BLPOP key 0 on a single connection, then ECHO on the same connection."""
    client = make_async_client(address, protocol=protocol, socket_timeout=None)
    try:
        popped = await client.blpop([key], timeout=0)
        echoed = await client.echo(f"after-{key}")
        incr = await client.incr(f"n-{key}")
        return {"popped": popped, "echo": echoed, "incr": incr}
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        await client.aclose()


def _raw_blpop(address, protocol, key, out, pushed: threading.Event):
    try:
        with RawConnection(address) as c:
            if protocol == 3:
                c.command("HELLO", "3")
                c.received.clear()
            c.send_command("BLPOP", key, 0)
            pushed.wait(IDLE_S + 10)
            popped = c.read_frame(timeout=3)
            c.send_command("ECHO", "after")
            echoed = c.read_frame(timeout=3)
            c.expect_silence(0.3)
            out["bytes"] = bytes(c.received)
            out["popped"], out["echo"] = popped.py(), echoed.py()
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["bytes"] = bytes(c.received) if "c" in locals() else b""


async def _blpop_scenario(redis, envoy):
    keys = {("py", 2): "q-py2", ("py", 3): "q-py3", ("raw", 2): "q-raw2", ("raw", 3): "q-raw3"}
    tasks = {k: asyncio.create_task(_redis_py_blpop(envoy.address, k[1], key))
             for k, key in keys.items() if k[0] == "py"}
    pushed = threading.Event()
    raw_out = {k: {} for k in keys if k[0] == "raw"}
    threads = [threading.Thread(target=_raw_blpop, daemon=True,
                                args=(envoy.address, k[1], keys[k], raw_out[k], pushed))
               for k in raw_out]
    for t in threads:
        t.start()
    direct = redis.direct()
    # Wait until all four are blocked in Redis, then idle.
    deadline = time.monotonic() + 5
    while direct.info("clients")["blocked_clients"] < 4:
        assert time.monotonic() < deadline, "clients did not block"
        await asyncio.sleep(0.05)
    await asyncio.sleep(IDLE_S)
    stats_after_idle = envoy.guard_stats() if envoy.with_filter else {}
    pushes = {k: direct.lpush(key, f"item-{key}") for k, key in keys.items()}
    pushed.set()
    py_results = {k: await asyncio.wait_for(t, 10) for k, t in tasks.items()}
    for t in threads:
        t.join(10)
    left = {k: direct.llen(key) for k, key in keys.items()}
    return keys, py_results, raw_out, left, stats_after_idle


def test_blpop_without_filter_is_lost(lab):
    redis, envoy = _envoy(lab, with_filter=False)
    keys, py_results, raw_out, left, _ = asyncio.run(_blpop_scenario(redis, envoy))
    print(py_results, raw_out, left)
    for k, res in py_results.items():
        assert "error" in res and "Connection closed by server." in res["error"], res
    for k, out in raw_out.items():
        assert "error" in out and "EOF" in out["error"], out
    # Nobody was waiting any more: every element stayed in its list.
    assert all(n == 1 for n in left.values()), left


def test_blpop_with_filter_delivers_and_keeps_reply_order(lab, module):
    redis, envoy = _envoy(lab, with_filter=True, module=module)
    keys, py_results, raw_out, left, idle_stats = asyncio.run(_blpop_scenario(redis, envoy))
    print(py_results, raw_out, left)
    print("filter stats after the idle spell:", idle_stats)
    assert idle_stats.get("reconnect_signals", 0) == 0, idle_stats
    assert idle_stats.get("connections") == 4, idle_stats
    for (kind, protocol), res in py_results.items():
        key = keys[(kind, protocol)]
        assert "error" not in res, res
        assert list(res["popped"]) == [key.encode(), f"item-{key}".encode()], res
        assert res["echo"] == f"after-{key}".encode(), res
        assert res["incr"] == 1, res
    for (kind, protocol), out in raw_out.items():
        key = keys[(kind, protocol)].encode()
        item = b"item-" + key
        assert "error" not in out, out
        expected = (b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(item), item)
                    + b"$5\r\nafter\r\n")
        assert out["bytes"] == expected, f"raw RESP{protocol} BLPOP bytes: {out['bytes']!r}"
    assert all(n == 0 for n in left.values()), left
    assert envoy.stats()["tcp.redis.idle_timeout"] == 0
    stats = envoy.guard_stats()
    print("filter stats:", stats)
    assert stats["keepalive.sent"] >= 4, stats
    assert stats.get("keepalive.failed", 0) == 0, stats
