"""Connection states where a naive keepalive would corrupt the stream, checked byte for byte
through the real Envoy + Redis: CLIENT REPLY OFF/SKIP, AUTH, RESP3 push messages racing the
keepalive, inline commands, blocking commands that time out, leaving subscribed mode, protocol
switches, MONITOR, transactions with errors, many idle connections, a black-holed Redis with a
command in flight.

Keepalive is 200ms everywhere here, so every idle spell of 0.6 s or more spans several
keepalive opportunities.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time

import pytest

from lab import RawConnection, encode_command

FAST = {"keepalive_interval": "200ms", "ping_timeout": "5s"}
IDLE = 0.7


@pytest.fixture
def redis_envoy(lab, module):
    redis = lab.redis()
    envoy = lab.envoy(redis, module=module, plugin_config=FAST)
    return redis, envoy


def _quiet(c, envoy, *, pings: bool, seconds: float = IDLE) -> bytes:
    """Idle for `seconds` and return what reached the client (a test expects b''). `pings`:
    whether the filter must have kept the connection alive meanwhile (a PING answered and its
    reply removed), or must have stayed silent (a state where a PING would corrupt the
    stream). Without this a test of 'its reply was removed' would pass with no PING at all."""
    before = envoy.guard_stats().get("keepalive.answered", 0)
    got = c.expect_silence(seconds)
    answered = envoy.guard_stats().get("keepalive.answered", 0) - before
    if pings:
        assert answered >= 1, f"no keepalive was answered in {seconds}s of idle"
    else:
        assert answered == 0, f"{answered} keepalive(s) answered where none may be sent"
    return got


def _no_signal(envoy):
    """No keepalive failed and the filter closed nothing. Call it while the test's connections
    are still open: a client's own close is checked in test_reconnect_signal.py."""
    stats = envoy.guard_stats()
    assert stats.get("reconnect_signals", 0) == 0, stats
    assert stats.get("keepalive.failed", 0) == 0, stats
    return stats


def test_client_reply_off_and_skip(redis_envoy):
    redis, envoy = redis_envoy
    with RawConnection(envoy.address) as c:
        c.send_command("CLIENT", "REPLY", "OFF")
        c.send_command("SET", "a", "1")
        assert _quiet(c, envoy, pings=False) == b""
        assert c.command("CLIENT", "REPLY", "ON").raw == b"+OK\r\n"
        assert c.command("GET", "a").raw == b"$1\r\n1\r\n"
        # SKIP drops the reply of the NEXT command: a PING slipped in between would take the
        # skip, and the client would get SET's +OK it did not ask for.
        c.send_command("CLIENT", "REPLY", "SKIP")
        assert _quiet(c, envoy, pings=False) == b""
        c.send_command("SET", "b", "2")
        assert _quiet(c, envoy, pings=True) == b""
        assert c.command("GET", "b").raw == b"$1\r\n2\r\n"
        assert _quiet(c, envoy, pings=True) == b""
        _no_signal(envoy)


def test_before_auth(lab, module):
    """Keepalives before AUTH get -NOAUTH from Redis; the client must not see them."""
    redis = lab.redis(extra_config={"requirepass": "s3cret"})
    envoy = lab.envoy(redis, module=module, plugin_config=FAST)
    with RawConnection(envoy.address) as c:
        assert c.command("GET", "x").raw == b"-NOAUTH Authentication required.\r\n"
        assert _quiet(c, envoy, pings=True) == b""
        assert c.command("AUTH", "s3cret").raw == b"+OK\r\n"
        assert _quiet(c, envoy, pings=True) == b""
        assert c.command("PING").raw == b"+PONG\r\n"
        assert c.expect_silence(0.3) == b""
        stats = _no_signal(envoy)
    assert stats["keepalive.sent"] >= 3


def test_resp3_tracking_pushes_race_keepalives(redis_envoy):
    """Invalidation pushes (>) arrive whenever another client writes; keepalive replies must be
    removed without eating or reordering a push."""
    redis, envoy = redis_envoy
    keys = [f"trk{i}" for i in range(12)]
    with RawConnection(envoy.address) as c:
        assert c.command("HELLO", "3").kind == "%"
        assert c.command("CLIENT", "TRACKING", "ON").raw == b"+OK\r\n"
        for k in keys:
            assert c.command("GET", k).raw == b"_\r\n"
        c.received.clear()
        direct = redis.direct()
        rnd = random.Random(11)

        def writer():
            for k in keys:
                time.sleep(rnd.choice([0.05, 0.19, 0.2, 0.21, 0.25]))
                direct.set(k, "v")

        t = threading.Thread(target=writer)
        t.start()
        t.join(10)
        got = c.expect_silence(0.6)
        expected = b"".join(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$%d\r\n%s\r\n" % (len(k), k.encode())
                            for k in keys)
        assert got == expected, f"pushes differ:\n{got!r}"
        assert c.command("PING").raw == b"+PONG\r\n"
        stats = _no_signal(envoy)
    assert stats["keepalive.sent"] >= 3


def test_inline_commands(redis_envoy):
    redis, envoy = redis_envoy
    with RawConnection(envoy.address) as c:
        c.send(b"SET inl 5\r\n")
        assert c.read_frame().raw == b"+OK\r\n"
        assert _quiet(c, envoy, pings=True) == b""
        c.send(b"GET in")
        # Half a command on the wire: a PING now would land inside it.
        assert _quiet(c, envoy, pings=False) == b""
        c.send(b"l\r\n")
        assert c.read_frame().raw == b"$1\r\n5\r\n"
        assert _quiet(c, envoy, pings=True) == b""
        c.send(b"PING\r\nECHO hi\r\n")
        assert [f.raw for f in c.read_frames(2)] == [b"+PONG\r\n", b"$2\r\nhi\r\n"]
        assert c.expect_silence(0.3) == b""
        _no_signal(envoy)


@pytest.mark.parametrize("protocol", [2, 3])
def test_blocking_commands_that_time_out(redis_envoy, protocol):
    """BLPOP/XREAD BLOCK/WAIT return a null / :0 after their timeout; the keepalives queued
    behind them must be removed, and the next reply must be the next command's."""
    redis, envoy = redis_envoy
    null = b"_\r\n" if protocol == 3 else b"*-1\r\n"
    with RawConnection(envoy.address) as c:
        if protocol == 3:
            assert c.command("HELLO", "3").kind == "%"
        for cmd, reply in ((("BLPOP", "nokey", "1"), null),
                           (("XREAD", "BLOCK", "800", "STREAMS", "nostream", "$"), null),
                           (("WAIT", "1", "700"), b":0\r\n")):
            c.received.clear()
            t0 = time.monotonic()
            assert c.command(*cmd, timeout=5).raw == reply, cmd
            assert time.monotonic() - t0 >= 0.6
            assert c.command("ECHO", "next").raw == b"$4\r\nnext\r\n"
            assert c.expect_silence(0.5) == b""
            assert bytes(c.received) == reply + b"$4\r\nnext\r\n"
        stats = _no_signal(envoy)
    # Behind each blocked command (0.7-1 s at 200 ms) keepalives were queued and removed.
    assert stats["keepalive.answered"] >= 6, stats


def test_subscribe_own_ping_and_unsubscribe_resp2(redis_envoy):
    """RESP2 subscribed mode: the client's OWN PING gets its pong; the filter's do not show.
    After UNSUBSCRIBE the connection is a normal one again."""
    redis, envoy = redis_envoy
    with RawConnection(envoy.address) as c:
        c.send_command("SUBSCRIBE", "c")
        assert c.read_frame().raw == b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"
        assert _quiet(c, envoy, pings=True) == b""
        assert c.command("PING").raw == b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
        assert c.command("PING", "mine").raw == b"*2\r\n$4\r\npong\r\n$4\r\nmine\r\n"
        assert _quiet(c, envoy, pings=True) == b""
        assert redis.direct().publish("c", "m") == 1
        assert c.read_frame().raw == b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"
        assert c.command("UNSUBSCRIBE", "c").raw == b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nc\r\n:0\r\n"
        assert _quiet(c, envoy, pings=True) == b""
        assert c.command("PING").raw == b"+PONG\r\n"
        assert c.expect_silence(0.3) == b""
        _no_signal(envoy)


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("leave", ["UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE",
                                   "UNSUBSCRIBE-all", "RESET"])
def test_leaving_subscribed_mode(redis_envoy, protocol, leave):
    """After the last (P|S)UNSUBSCRIBE (or RESET) the connection is a normal one again and a
    keepalive's reply has the normal shape: the filter must still remove it."""
    redis, envoy = redis_envoy
    sub = {"PUNSUBSCRIBE": "PSUBSCRIBE", "SUNSUBSCRIBE": "SSUBSCRIBE"}.get(leave, "SUBSCRIBE")
    with RawConnection(envoy.address) as c:
        if protocol == 3:
            assert c.command("HELLO", "3").kind == "%"
        else:
            assert c.command("PING").raw == b"+PONG\r\n"
        c.send_command(sub, "ch")
        assert c.read_frame().py()[0].lower() == sub.lower().encode()
        assert _quiet(c, envoy, pings=True) == b""
        if leave == "UNSUBSCRIBE-all":
            c.send_command("UNSUBSCRIBE")
        elif leave == "RESET":
            c.send_command("RESET")
        else:
            c.send_command(leave, "ch")
        c.read_frame()
        c.received.clear()
        assert _quiet(c, envoy, pings=True) == b"", "a keepalive reply reached the client"
        assert c.command("GET", "missing").raw in (b"$-1\r\n", b"_\r\n")
        assert bytes(c.received) in (b"$-1\r\n", b"_\r\n")
        stats = _no_signal(envoy)
    assert stats.get("passthrough", 0) == 0, stats


def test_never_used_connection_with_probes_off(lab, module):
    """A client that connects and sends nothing, with probes off. Wasm: Envoy holds no paused
    read buffer for it, so no PING can be injected, and the documented fallback applies: the
    idle client is closed cleanly (FIN, no bytes) at keepalive_interval. Native: the PING goes
    out like any other (the dynamic-module ABI injects without a paused buffer)."""
    redis = lab.redis()
    envoy = lab.envoy(redis, module=module, plugin_config={**FAST, "probe_after": "0s"})
    if module.native:
        with RawConnection(envoy.address) as c:
            assert c.expect_silence(IDLE) == b""
            stats = envoy.guard_stats()
            assert stats["keepalive.answered"] >= 1 and stats["keepalive.refused"] == 0, stats
            assert c.command("PING").raw == b"+PONG\r\n"
        return
    with RawConnection(envoy.address) as c:
        waited, got, reset = c.wait_eof(3)
        print(f"never-used connection closed after {waited:.2f}s (reset={reset})")
        assert got == b"" and not reset
    stats = envoy.guard_stats()
    assert stats["keepalive.refused"] >= 1 and stats["reconnect_signals"] >= 1, stats
    with RawConnection(envoy.address) as c:
        assert c.command("PING").raw == b"+PONG\r\n"
        assert c.expect_silence(IDLE) == b""


def test_never_used_connection_with_probes_on(lab, module):
    """With probes on (the default), a connection a pool opened ahead of use. Wasm: no PING can
    go out on it (no paused read buffer), so it is left alone, and its first command, coming
    after probe_after, waits for a PING's answer. Native: it is kept alive like any other, so
    the link is proven and its first command goes straight through."""
    redis = lab.redis()
    envoy = lab.envoy(redis, module=module, plugin_config={**FAST, "probe_after": "1s"})
    with RawConnection(envoy.address) as c:
        assert c.expect_silence(2.0) == b"", "the filter closed or wrote to an unused connection"
        assert c.command("INCR", "first").raw == b":1\r\n"
        assert c.expect_silence(IDLE) == b""
    stats = envoy.guard_stats()
    print("filter stats:", stats)
    assert stats.get("keepalive.refused", 0) == 0 and stats.get("reconnect_signals", 0) == 0, stats
    if module.native:
        assert stats["keepalive.answered"] >= 5 and stats["probe.held"] == 0, stats
    else:  # a probe, so no keepalive had proven the link before
        assert stats["probe.held"] == 1 and stats["probe.passed"] == 1, stats
    assert redis.direct().get("first") == b"1"


def test_protocol_switches_and_reset(redis_envoy):
    redis, envoy = redis_envoy
    with RawConnection(envoy.address) as c:
        assert c.command("GET", "missing").raw == b"$-1\r\n"
        assert _quiet(c, envoy, pings=True) == b""
        assert c.command("HELLO", "3").kind == "%"
        assert _quiet(c, envoy, pings=True) == b""
        assert c.command("GET", "missing").raw == b"_\r\n"
        c.send_command("SUBSCRIBE", "r3")
        assert c.read_frame().raw.startswith(b">3\r\n$9\r\nsubscribe")
        assert _quiet(c, envoy, pings=True) == b""
        assert c.command("PING").raw == b"+PONG\r\n"  # RESP3 subscribers get a plain PONG
        assert c.command("RESET").raw == b"+RESET\r\n"  # back to RESP2, unsubscribed
        assert _quiet(c, envoy, pings=True) == b""
        assert c.command("GET", "missing").raw == b"$-1\r\n"
        hello2 = c.command("HELLO", "2")
        assert hello2.kind == "*"
        assert _quiet(c, envoy, pings=True) == b""
        assert c.command("PING").raw == b"+PONG\r\n"
        assert c.expect_silence(0.3) == b""
        _no_signal(envoy)


def test_transaction_with_errors(redis_envoy):
    redis, envoy = redis_envoy
    with RawConnection(envoy.address) as c:
        # MULTI left open while idle is not kept alive (a PING would be queued in it).
        assert c.command("MULTI").raw == b"+OK\r\n"
        assert _quiet(c, envoy, pings=False) == b""
        assert c.command("SET", "only-key").kind == "-"
        assert _quiet(c, envoy, pings=False) == b""
        assert c.command("EXEC").raw.startswith(b"-EXECABORT")
        assert c.command("WATCH", "w").raw == b"+OK\r\n"
        assert c.command("MULTI").raw == b"+OK\r\n"
        assert c.command("INCR", "w").raw == b"+QUEUED\r\n"
        assert _quiet(c, envoy, pings=False) == b""
        assert c.command("DISCARD").raw == b"+OK\r\n"
        assert _quiet(c, envoy, pings=True) == b""
        assert c.command("GET", "w").raw == b"$-1\r\n"
        _no_signal(envoy)


def test_monitor_sees_only_real_traffic(redis_envoy):
    redis, envoy = redis_envoy
    with RawConnection(envoy.address) as c:
        assert c.command("MONITOR").raw == b"+OK\r\n"
        assert _quiet(c, envoy, pings=False) == b""
        redis.direct().set("m", "1")
        got = c.expect_silence(0.5)
        lines = [ln for ln in got.split(b"\r\n") if ln]
        assert all(ln.startswith(b"+") for ln in lines), got
        assert [ln for ln in lines if b'"SET" "m" "1"' in ln], got
        assert not [ln for ln in lines if b'"PING"' in ln or b'"ping"' in ln], got
    # (MONITOR output of a Redis shared with guarded connections does show their PINGs:
    # they are real commands to Redis.)


def test_many_idle_connections(lab, module):
    redis = lab.redis(timeout=1)
    envoy = lab.envoy(redis, module=module, plugin_config=FAST, concurrency=2)
    plain = lab.envoy(redis, name="envoy-plain")  # the control: the same idle spell, no filter
    controls = [RawConnection(plain.address) for _ in range(5)]
    conns = [RawConnection(envoy.address) for _ in range(60)]
    try:
        for c in conns + controls:
            c.send_command("PING")
        for c in conns + controls:
            assert c.read_frame().raw == b"+PONG\r\n"
        envoy.wait_for_guard_stat("connections", lambda v: v == 60, 5)
        time.sleep(2.5)  # Redis `timeout 1` would have closed every one of them
        for c in controls:  # ... and did, without the filter
            c.wait_eof(3)
        for c in conns:
            assert c.expect_silence(0) == b""
        for i, c in enumerate(conns):
            c.send_command("ECHO", i)
        for i, c in enumerate(conns):
            assert c.read_frame().raw == encode_command(i)[4:], i
        assert redis.direct().info("clients")["connected_clients"] == 61
        stats = _no_signal(envoy)
    finally:
        for c in conns + controls:
            c.close()
    assert stats["keepalive.sent"] >= 60 * 5, stats
    envoy.wait_for_guard_stat("connections", lambda v: v == 0, 5)


def test_client_half_close_and_abrupt_closes(redis_envoy):
    """Clients that half-close or vanish around keepalives do not upset the filter."""
    redis, envoy = redis_envoy
    with RawConnection(envoy.address) as c:
        c.send_command("PING")
        c.sock.shutdown(socket.SHUT_WR)
        waited, got, _ = c.wait_eof(3)
        assert got == b"+PONG\r\n"
    rnd = random.Random(5)
    for _ in range(20):
        c = RawConnection(envoy.address)
        c.send_command("SET", "x", "y")
        time.sleep(rnd.choice([0.0, 0.19, 0.2, 0.21, 0.3]))
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()  # RST
    with RawConnection(envoy.address) as c:
        assert c.command("GET", "x").raw == b"$1\r\ny\r\n"
    envoy.wait_for_guard_stat("connections", lambda v: v == 0, 5)


def test_black_hole_with_a_command_in_flight(lab, module):
    """Redis freezes while a keepalive is outstanding and the client then sends a command. The
    command waits behind the unanswered PING and is never sent: at ping_timeout the client gets
    EOF with no byte before it, and Redis, once back, never ran the command."""
    redis = lab.redis()
    envoy = lab.envoy(redis, module=module, plugin_config={"keepalive_interval": "1s",
                                                        "ping_timeout": "1s"})
    with RawConnection(envoy.address) as c:
        assert c.command("PING").raw == b"+PONG\r\n"
        sent = envoy.guard_stat("keepalive.sent", 0)
        redis.freeze()
        try:
            # The keepalive goes out at ~1 s and waits for its reply (1 s): send the command
            # as soon as it is out, not after a fixed sleep that a busy machine can overrun.
            envoy.wait_for_guard_stat("keepalive.sent", lambda v: v > sent, 5)
            c.send_command("SET", "inflight", "1")
            waited, early, _ = c.wait_eof(5)
        finally:
            redis.unfreeze()
    print(f"with a command in flight behind a keepalive: EOF after {waited:.2f} s; "
          f"stats {envoy.guard_stats()}")
    assert early == b"", f"bytes before the close: {early!r}"
    assert envoy.guard_stats().get("probe.failed", 0) == 1
    assert redis.direct().get("inflight") is None, "the held command reached Redis"


def test_commands_sent_while_a_keepalive_is_outstanding(redis_envoy):
    """Redis stalls (SIGSTOP) right after a keepalive went out; the client pipelines commands
    while the PING's reply is still pending. After the stall: exactly the client's replies."""
    redis, envoy = redis_envoy
    with RawConnection(envoy.address) as c:
        for round_ in range(3):
            assert c.command("PING").raw == b"+PONG\r\n"
            sent = envoy.guard_stat("keepalive.sent", 0)
            with redis.frozen():
                wait_deadline = time.monotonic() + 2
                while envoy.guard_stat("keepalive.sent", 0) == sent:
                    assert time.monotonic() < wait_deadline, "no keepalive went out"
                    time.sleep(0.02)
                c.received.clear()
                c.send(encode_command("INCR", "held") + encode_command("GET", "nothing"))
                assert c.expect_silence(0.4) == b""
            frames = c.read_frames(2)
            assert [f.raw for f in frames] == [b":%d\r\n" % (round_ + 1), b"$-1\r\n"]
            assert c.expect_silence(0.3) == b""
            assert bytes(c.received) == b":%d\r\n$-1\r\n" % (round_ + 1)
        _no_signal(envoy)


def test_subscriber_message_storm_with_keepalives(redis_envoy):
    """Messages published at random moments around the keepalive interval, to a RESP2 and a
    RESP3 subscriber (channel + pattern, one large message): every message, in order, and not
    one keepalive reply."""
    redis, envoy = redis_envoy
    rnd = random.Random(3)
    payloads = [f"m{i}".encode() * rnd.choice([1, 3, 50]) for i in range(30)]
    payloads[17] = rnd.randbytes(600_000)
    subs = []
    for protocol in (2, 3):
        c = RawConnection(envoy.address)
        if protocol == 3:
            assert c.command("HELLO", "3").kind == "%"
        c.send_command("SUBSCRIBE", "storm")
        c.read_frame()
        c.send_command("PSUBSCRIBE", "st*")
        c.read_frame()
        c.received.clear()
        subs.append((protocol, c))
    try:
        direct = redis.direct()
        for p in payloads:
            time.sleep(rnd.choice([0.0, 0.05, 0.15, 0.19, 0.2, 0.21, 0.3]))
            assert direct.publish("storm", p) == 4
        for protocol, c in subs:
            head = b">" if protocol == 3 else b"*"
            expected = b"".join(
                head + b"3\r\n$7\r\nmessage\r\n$5\r\nstorm\r\n$%d\r\n%s\r\n" % (len(p), p)
                + head + b"4\r\n$8\r\npmessage\r\n$3\r\nst*\r\n$5\r\nstorm\r\n$%d\r\n%s\r\n"
                % (len(p), p)
                for p in payloads)
            deadline = time.monotonic() + 5
            while len(c.received) < len(expected) and time.monotonic() < deadline:
                c.expect_silence(0.1)
            c.expect_silence(0.4)
            got = bytes(c.received)
            assert got == expected, (
                f"RESP{protocol}: {len(got)} bytes, expected {len(expected)}; first difference at "
                f"{next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), 'end')}: "
                f"{got[max(0, len(os.path.commonprefix([got, expected])) - 20):][:80]!r}")
        stats = _no_signal(envoy)
        assert stats["keepalive.sent"] >= 5, stats
    finally:
        for _, c in subs:
            c.close()
