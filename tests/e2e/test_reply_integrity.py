"""(c) Reply integrity while keepalives fire (keepalive_interval 200ms).

The client must get exactly its replies, in order, whatever the timing of its commands relative
to the filter's PINGs: pipelines of INCRs and mixed commands after pauses around the interval,
transactions, a command split across a pause, a large reply, and an idle raw socket that must
receive zero unsolicited bytes.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from lab import RawConnection, encode_command, make_async_client

GUARD = {"keepalive_interval": "200ms", "ping_timeout": "5s"}
# Pauses around and across the keepalive interval, so commands race the injected PINGs.
PAUSES = [0, 0.05, 0.15, 0.19, 0.2, 0.21, 0.23, 0.3, 0.45, 0.7, 1.0]


@pytest.fixture
def guarded(lab, module):
    redis = lab.redis(timeout=0)
    envoy = lab.envoy(redis, module=module, plugin_config=GUARD, concurrency=2)
    return redis, envoy


def _first_difference(got, expect) -> str:
    if len(got) != len(expect):
        return f"{len(got)} replies, expected {len(expect)}"
    i = next(i for i, (a, b) in enumerate(zip(got, expect)) if a != b)
    return f"reply {i} is {str(got[i])[:80]}, expected {str(expect[i])[:80]}"


async def _pipeline_client(address, protocol, seed, iterations):
    """Returns the number of pipelines checked; raises AssertionError on any wrong reply."""
    rnd = random.Random(seed)
    client = make_async_client(address, protocol=protocol)
    counter, expected_counter = f"ctr-{protocol}-{seed}", 0
    try:
        for it in range(iterations):
            await asyncio.sleep(rnd.choice(PAUSES))
            transaction = it % 5 == 4
            pipe = client.pipeline(transaction=transaction)
            expect = []
            n_incr = rnd.randint(1, 60)
            for _ in range(n_incr):
                pipe.incr(counter)
                expected_counter += 1
                expect.append(expected_counter)
            big = rnd.randbytes(rnd.choice([10, 1000, 70_000, 300_000]))
            key = f"blob-{protocol}-{seed}-{it}"
            pipe.set(key, big)
            expect.append(True)
            pipe.get(key)
            expect.append(big)
            pipe.echo(f"echo-{it}")
            expect.append(f"echo-{it}".encode())
            pipe.rpush(f"list-{protocol}-{seed}", it)
            expect.append(it + 1)
            pipe.lrange(f"list-{protocol}-{seed}", -2, -1)
            expect.append([str(x).encode() for x in range(max(0, it - 1), it + 1)])
            pipe.hset(f"h-{protocol}-{seed}", mapping={"it": it})
            expect.append(1 if it == 0 else 0)
            pipe.hgetall(f"h-{protocol}-{seed}")
            expect.append({b"it": str(it).encode()})
            pipe.ping()
            expect.append(True)
            got = await pipe.execute()
            if got != expect:
                raise AssertionError(f"RESP{protocol} pipeline {it} (transaction={transaction}): "
                                     f"{_first_difference(got, expect)}")
            # A single command right after the pipeline, then another pause.
            assert await client.incr(counter) == expected_counter + 1
            expected_counter += 1
        return iterations
    finally:
        await client.aclose()


def test_pipelines_get_exactly_their_replies(guarded):
    redis, envoy = guarded

    async def main():
        return await asyncio.gather(
            _pipeline_client(envoy.address, 3, 1, 25),
            _pipeline_client(envoy.address, 2, 2, 25),
            _pipeline_client(envoy.address, 3, 3, 25),
        )

    assert asyncio.run(main()) == [25, 25, 25]
    stats = envoy.guard_stats()
    print("filter stats:", stats)
    assert stats["keepalive.sent"] > 10, "keepalives did not fire between the pipelines"
    assert stats.get("keepalive.failed", 0) == 0, stats


@pytest.mark.parametrize("protocol", [2, 3])
def test_idle_raw_socket_receives_nothing(guarded, protocol):
    redis, envoy = guarded
    with RawConnection(envoy.address) as c:
        if protocol == 3:
            assert c.command("HELLO", "3").kind == "%"
        c.received.clear()
        assert c.command("SET", "k", "v").raw == b"+OK\r\n"
        sent_before = envoy.guard_stat("keepalive.sent", 0)
        assert c.expect_silence(1.5) == b"", "unsolicited bytes reached an idle client"
        sent_during = envoy.guard_stat("keepalive.sent", 0) - sent_before
        assert sent_during >= 3, f"only {sent_during} keepalives in 1.5 s at 200ms"
        c.send_command("GET", "k")
        c.send_command("PING")
        assert c.read_frames(2)[0].raw == b"$1\r\nv\r\n"
        assert c.expect_silence(0.5) == b""
        assert bytes(c.received) == b"+OK\r\n$1\r\nv\r\n+PONG\r\n"


def test_command_split_across_keepalive_intervals(guarded):
    """Half a command, then a pause longer than the interval: no PING may land inside it."""
    redis, envoy = guarded
    cmd = encode_command("SET", "split", "x" * 100)
    with RawConnection(envoy.address) as c:
        for cut in (5, 17, len(cmd) - 1):
            c.received.clear()
            c.send(cmd[:cut])
            assert c.expect_silence(0.7) == b""
            c.send(cmd[cut:])
            assert c.read_frame().raw == b"+OK\r\n"
            assert c.expect_silence(0.5) == b""
            assert bytes(c.received) == b"+OK\r\n"
    assert redis.direct().get("split") == b"x" * 100


def test_transaction_left_open_across_keepalives(guarded):
    """MULTI … idle … EXEC: a PING must not be queued into the client's transaction."""
    redis, envoy = guarded
    with RawConnection(envoy.address) as c:
        c.received.clear()
        assert c.command("MULTI").raw == b"+OK\r\n"
        assert c.expect_silence(0.8) == b""
        assert c.command("INCR", "tx").raw == b"+QUEUED\r\n"
        assert c.expect_silence(0.8) == b""
        assert c.command("EXEC").raw == b"*1\r\n:1\r\n"
        assert c.expect_silence(0.5) == b""
        assert bytes(c.received) == b"+OK\r\n+QUEUED\r\n*1\r\n:1\r\n"


def test_large_reply_read_slowly(guarded):
    """An 8 MB reply the client reads late: exactly the value, then silence."""
    redis, envoy = guarded
    value = random.Random(7).randbytes(8 * 1024 * 1024)
    redis.direct().set("big", value)
    with RawConnection(envoy.address, timeout=10) as c:
        c.send_command("GET", "big")
        time.sleep(0.6)  # do not read: Envoy's buffers fill, bytes stop flowing for a while
        frame = c.read_frame(timeout=10)
        assert frame.kind == "$" and frame.value == value
        assert c.expect_silence(0.6) == b""
        assert c.command("PING").raw == b"+PONG\r\n"
