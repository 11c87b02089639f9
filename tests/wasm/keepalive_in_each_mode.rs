//! The real `.wasm` under the Envoy-faithful host: connection modes (subscribed, RESP3 pushes,
//! MULTI, CLIENT REPLY, MONITOR, AUTH, HELLO) and what the keepalive does in each.

use crate::host::{cmd, stat, ConnId, Envoy, PING, PONG, PONG_SUBSCRIBED};

const CONFIG: &str = r#"{"keepalive_interval": "1s", "ping_timeout": "10s"}"#;

fn exchange(e: &mut Envoy, c: ConnId, request: &[u8], reply: &[u8]) {
    e.client_send(c, request);
    assert_eq!(
        e.take_redis(c),
        request,
        "Redis got other bytes than the client's"
    );
    e.redis_send(c, reply);
    assert_eq!(
        e.take_client(c),
        reply,
        "the client got other bytes than Redis's reply"
    );
}

const HELLO3_REPLY: &[u8] = b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";

#[test]
fn resp2_subscriber_gets_messages_but_never_the_pong() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = e.connect();
    exchange(
        &mut e,
        c,
        &cmd(&["SUBSCRIBE", "ch"]),
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
    );
    let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
    for round in 0..3 {
        e.advance(1000);
        assert_eq!(e.take_redis(c), PING, "round {round}");
        // A message published just before Redis answers, in the same read and split.
        let wire = [message.as_slice(), PONG_SUBSCRIBED, message].concat();
        for chunk in wire.chunks(7 + round) {
            e.redis_send(c, chunk);
        }
        assert_eq!(e.take_client(c), [message.as_slice(), message].concat());
    }
    assert_eq!(e.stat(stat::ANSWERED), 3);
    // After the last UNSUBSCRIBE, Redis answers PING with the bulk form again.
    exchange(
        &mut e,
        c,
        &cmd(&["UNSUBSCRIBE"]),
        b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n",
    );
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
    e.redis_send(c, PONG);
    assert_eq!(e.take_client(c), b"");
    assert_eq!(e.stat(stat::PASSTHROUGH), 0);
}

#[test]
fn resp3_pushes_interleave_with_the_pong() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = e.connect();
    exchange(&mut e, c, &cmd(&["HELLO", "3"]), HELLO3_REPLY);
    exchange(
        &mut e,
        c,
        &cmd(&["SUBSCRIBE", "ch"]),
        b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
    );
    let push = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
    let wire = [push.as_slice(), PONG, push].concat();
    for i in 0..=wire.len() {
        let mut f = Envoy::load(CONFIG).unwrap();
        let d = f.connect();
        exchange(&mut f, d, &cmd(&["HELLO", "3"]), HELLO3_REPLY);
        exchange(
            &mut f,
            d,
            &cmd(&["SUBSCRIBE", "ch"]),
            b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
        );
        f.advance(1000);
        f.take_redis(d);
        f.redis_send(d, &wire[..i]);
        f.redis_send(d, &wire[i..]);
        assert_eq!(
            f.take_client(d),
            [push.as_slice(), push].concat(),
            "split at {i}"
        );
    }
    // A RESP3 client that is not subscribed gets invalidation pushes between replies.
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = e.connect();
    exchange(&mut e, c, &cmd(&["HELLO", "3"]), HELLO3_REPLY);
    exchange(&mut e, c, &cmd(&["CLIENT", "TRACKING", "ON"]), b"+OK\r\n");
    exchange(&mut e, c, &cmd(&["GET", "k"]), b"_\r\n");
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
    let invalidate = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n";
    e.redis_send(c, &[invalidate.as_slice(), PONG].concat());
    assert_eq!(e.take_client(c), invalidate);
    assert_eq!(e.stat(stat::ANSWERED), 1);
}

#[test]
fn hello_3_then_keepalive_reply_is_removed() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = e.connect();
    exchange(&mut e, c, &cmd(&["HELLO", "3"]), HELLO3_REPLY);
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
    e.redis_send(c, PONG);
    assert_eq!(e.take_client(c), b"");
    assert_eq!(e.stat(stat::ANSWERED), 1);
}

#[test]
fn no_keepalive_while_multi_is_open() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = e.connect();
    exchange(&mut e, c, &cmd(&["MULTI"]), b"+OK\r\n");
    exchange(&mut e, c, &cmd(&["INCR", "n"]), b"+QUEUED\r\n");
    e.advance(5_000);
    assert_eq!(
        e.take_redis(c),
        b"",
        "a PING inside MULTI would be queued into the transaction"
    );
    exchange(&mut e, c, &cmd(&["EXEC"]), b"*1\r\n:1\r\n");
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
    e.redis_send(c, PONG);
    assert_eq!(e.take_client(c), b"");
}

#[test]
fn no_keepalive_under_client_reply_off_or_skip() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = e.connect();
    // OFF: Redis sends no reply at all, not even to CLIENT REPLY OFF.
    e.client_send(c, &cmd(&["CLIENT", "REPLY", "OFF"]));
    e.take_redis(c);
    e.client_send(c, &cmd(&["SET", "k", "v"]));
    e.take_redis(c);
    e.advance(5_000);
    assert_eq!(
        e.take_redis(c),
        b"",
        "a PING under CLIENT REPLY OFF gets no reply"
    );
    exchange(&mut e, c, &cmd(&["CLIENT", "REPLY", "ON"]), b"+OK\r\n");
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
    e.redis_send(c, PONG);
    assert_eq!(e.take_client(c), b"");

    // SKIP: the next command's reply is skipped; the one after is answered again.
    e.client_send(c, &cmd(&["CLIENT", "REPLY", "SKIP"]));
    e.take_redis(c);
    e.advance(5_000);
    assert_eq!(
        e.take_redis(c),
        b"",
        "a PING right after SKIP would lose its reply"
    );
    e.client_send(c, &cmd(&["SET", "k", "v"]));
    e.take_redis(c);
    exchange(&mut e, c, &cmd(&["GET", "k"]), b"$1\r\nv\r\n");
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
    e.redis_send(c, PONG);
    assert_eq!(e.take_client(c), b"");
    assert_eq!(e.stat(stat::PASSTHROUGH), 0);
}

#[test]
fn monitor_makes_the_filter_pass_through() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = e.connect();
    exchange(&mut e, c, &cmd(&["MONITOR"]), b"+OK\r\n");
    let feed = b"+1700000000.000000 [0 127.0.0.1:5000] \"PING\"\r\n";
    e.redis_send(c, feed);
    assert_eq!(e.take_client(c), feed);
    e.advance(10_000);
    assert_eq!(e.take_redis(c), b"");
    assert_eq!(e.stat(stat::PASSTHROUGH), 1);
}

#[test]
fn noauth_reply_to_the_keepalive_is_removed_and_auth_works_after() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = e.connect();
    // A client that connected and has not authenticated yet.
    exchange(
        &mut e,
        c,
        &cmd(&["PING"]),
        b"-NOAUTH Authentication required.\r\n",
    );
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
    e.redis_send(c, b"-NOAUTH Authentication required.\r\n");
    assert_eq!(
        e.take_client(c),
        b"",
        "the filter's NOAUTH reached the client"
    );
    exchange(&mut e, c, &cmd(&["AUTH", "secret"]), b"+OK\r\n");
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
    e.redis_send(c, PONG);
    assert_eq!(e.take_client(c), b"");
    exchange(&mut e, c, &cmd(&["GET", "k"]), b"$-1\r\n");
}

#[test]
fn auth_sent_before_the_first_keepalive() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = e.connect();
    exchange(&mut e, c, &cmd(&["AUTH", "default", "secret"]), b"+OK\r\n");
    exchange(&mut e, c, &cmd(&["SELECT", "2"]), b"+OK\r\n");
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
    e.redis_send(c, PONG);
    assert_eq!(e.take_client(c), b"");
    assert_eq!(e.stat(stat::ANSWERED), 1);
}
