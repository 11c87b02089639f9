//! The session machine's rules, per mode, with a fake clock and Vec-backed buffers.

use crate::support::{cmd, World};
use redis_idle_guard::config::Config;
use redis_idle_guard::session::{CloseReason, Event, PassthroughReason, TickAction, PING};

const PONG: &[u8] = b"$16\r\nredis-idle-guard\r\n";
const PONG_RESP2_SUB: &[u8] = b"*2\r\n$4\r\npong\r\n$16\r\nredis-idle-guard\r\n";

fn world() -> World {
    World::new(Config {
        keepalive_interval: Some(1_000),
        ping_timeout: 500,
        probe_after: None,
        learn: None,
    })
}

fn events(w: &mut World) -> Vec<Event> {
    w.session.take_events()
}

#[test]
fn keepalive_fires_at_the_interval_not_before_and_one_at_a_time() {
    let mut w = world();
    w.client(&cmd(&["GET", "k"]));
    w.server(b"$-1\r\n");
    assert_eq!(w.advance(999), TickAction::None);
    assert_eq!(w.advance(1), TickAction::SendPing);
    assert_eq!(w.to_redis_since_mark(), PING);
    // While it is unanswered, no second PING, even long after the interval.
    assert_eq!(w.advance(400), TickAction::None);
    w.server(PONG);
    assert_eq!(w.to_client, b"$-1\r\n");
    assert_eq!(w.advance(999), TickAction::None);
    assert_eq!(w.advance(1), TickAction::SendPing);
    let ev = events(&mut w);
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::KeepaliveSent { .. }))
            .count(),
        2
    );
    assert_eq!(
        ev.iter()
            .filter(|e| **e == Event::KeepaliveAnswered)
            .count(),
        1
    );
}

#[test]
fn next_deadline_is_the_keepalive_time() {
    let mut w = world();
    assert_eq!(w.session.next_deadline(), Some(1_000));
    w.advance(300);
    w.client(&cmd(&["PING"]));
    assert_eq!(w.session.next_deadline(), Some(1_300));
}

#[test]
fn keepalive_off_never_pings() {
    let mut w = World::new(Config {
        keepalive_interval: None,
        ping_timeout: 500,
        probe_after: None,
        learn: None,
    });
    assert_eq!(w.session.next_deadline(), None);
    assert_eq!(w.advance(1_000_000), TickAction::None);
}

#[test]
fn pong_split_at_every_byte_is_removed() {
    for split in 1..PONG.len() {
        let mut w = world();
        w.client(&cmd(&["SET", "a", "1"]));
        w.server(b"+OK\r\n");
        assert_eq!(w.advance(1_000), TickAction::SendPing);
        w.server(&PONG[..split]);
        w.server(&PONG[split..]);
        assert_eq!(w.to_client, b"+OK\r\n", "split at {split}");
        w.client(&cmd(&["GET", "a"]));
        w.server(b"$1\r\n1\r\n");
        assert_eq!(w.to_client, b"+OK\r\n$1\r\n1\r\n", "split at {split}");
    }
}

#[test]
fn pong_split_byte_by_byte_is_removed() {
    let mut w = world();
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    for b in PONG {
        w.server(&[*b]);
    }
    assert!(w.to_client.is_empty());
    assert!(events(&mut w).contains(&Event::KeepaliveAnswered));
}

#[test]
fn pong_glued_to_the_next_reply_is_removed() {
    let mut w = world();
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    w.client(&cmd(&["INCR", "n"]));
    let mut glued = PONG.to_vec();
    glued.extend_from_slice(b":1\r\n");
    w.server(&glued);
    assert_eq!(w.to_client, b":1\r\n");
}

#[test]
fn pong_behind_a_blocked_reply_is_removed_and_not_timed_out() {
    let mut w = world();
    w.client(&cmd(&["BLPOP", "q", "0"]));
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    // Blocked: far past ping_timeout, still no close; more PINGs queue behind the block.
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    assert_eq!(w.advance(5_000), TickAction::SendPing);
    let mut replies = b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n".to_vec();
    replies.extend_from_slice(PONG);
    replies.extend_from_slice(PONG);
    w.server(&replies);
    w.server(PONG);
    assert_eq!(w.to_client, b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n");
    assert!(!events(&mut w)
        .iter()
        .any(|e| matches!(e, Event::ReconnectSignal(_))));
}

#[test]
fn ping_behind_block_times_out_once_the_block_is_answered() {
    let mut w = world();
    w.client(&cmd(&["BLPOP", "q", "0"]));
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    w.advance(3_000);
    w.server(b"*-1\r\n");
    assert_eq!(w.advance(499), TickAction::None);
    assert_eq!(w.advance(1), TickAction::Close(CloseReason::PingTimeout));
}

#[test]
fn unanswered_ping_closes_the_idle_connection() {
    let mut w = world();
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    assert_eq!(w.advance(499), TickAction::None);
    assert_eq!(w.advance(1), TickAction::Close(CloseReason::PingTimeout));
    let ev = events(&mut w);
    assert!(ev.contains(&Event::KeepaliveFailed));
    assert!(ev.contains(&Event::ReconnectSignal(CloseReason::PingTimeout)));
    assert_eq!(w.session.next_deadline(), None);
}

#[test]
fn resp2_subscriber_gets_kept_alive_and_sees_only_its_messages() {
    let mut w = world();
    w.client(&cmd(&["SUBSCRIBE", "ch", "other"]));
    let confirm = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$5\r\nother\r\n:2\r\n";
    w.server(confirm);
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
    // A message arrives before the PING's reply, and the reply comes split.
    let mut bytes = message.to_vec();
    bytes.extend_from_slice(&PONG_RESP2_SUB[..3]);
    w.server(&bytes);
    w.server(&PONG_RESP2_SUB[3..]);
    w.server(message);
    let mut expected = confirm.to_vec();
    expected.extend_from_slice(message);
    expected.extend_from_slice(message);
    assert_eq!(w.to_client, expected);
    assert!(events(&mut w).contains(&Event::KeepaliveAnswered));
}

#[test]
fn resp2_client_ping_while_subscribed_reaches_the_client() {
    let mut w = world();
    w.client(&cmd(&["SUBSCRIBE", "ch"]));
    w.server(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
    w.client(&cmd(&["PING"]));
    w.server(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    assert!(w.to_client.ends_with(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"));
    assert!(!w.session.is_passthrough());
}

#[test]
fn resp3_pushes_pass_and_pong_is_removed() {
    let mut w = world();
    w.client(&cmd(&["HELLO", "3"]));
    w.server(b"%1\r\n+proto\r\n:3\r\n");
    w.client(&cmd(&["SUBSCRIBE", "ch"]));
    let confirm = b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
    w.server(confirm);
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    let push = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
    let mut bytes = push.to_vec();
    bytes.extend_from_slice(PONG);
    bytes.extend_from_slice(push);
    w.server(&bytes);
    let mut expected = b"%1\r\n+proto\r\n:3\r\n".to_vec();
    expected.extend_from_slice(confirm);
    expected.extend_from_slice(push);
    expected.extend_from_slice(push);
    assert_eq!(w.to_client, expected);
}

#[test]
fn no_keepalive_inside_multi() {
    let mut w = world();
    w.client(&cmd(&["MULTI"]));
    w.server(b"+OK\r\n");
    w.client(&cmd(&["INCR", "n"]));
    w.server(b"+QUEUED\r\n");
    assert_eq!(w.advance(5_000), TickAction::None);
    w.client(&cmd(&["EXEC"]));
    w.server(b"*1\r\n:1\r\n");
    assert_eq!(w.advance(1_000), TickAction::SendPing);
}

#[test]
fn no_keepalive_while_client_reply_is_off_or_skipping() {
    let mut w = world();
    w.client(&cmd(&["CLIENT", "REPLY", "OFF"]));
    w.client(&cmd(&["SET", "a", "1"]));
    assert_eq!(w.advance(5_000), TickAction::None);
    w.client(&cmd(&["CLIENT", "REPLY", "ON"]));
    w.server(b"+OK\r\n");
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    w.server(PONG);
    assert_eq!(w.to_client, b"+OK\r\n");

    let mut w = world();
    w.client(&cmd(&["CLIENT", "REPLY", "SKIP"]));
    assert_eq!(
        w.advance(5_000),
        TickAction::None,
        "SKIP pending: the next reply is suppressed"
    );
    w.client(&cmd(&["SET", "a", "1"]));
    // The skipped command has no reply; the connection is idle again.
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    w.server(PONG);
    assert!(w.to_client.is_empty());
    assert!(!w.session.is_passthrough());
}

#[test]
fn monitor_makes_the_filter_pass_through() {
    let mut w = world();
    w.client(&cmd(&["MONITOR"]));
    w.server(b"+OK\r\n+1700000000.000000 [0 127.0.0.1:1] \"GET\" \"a\"\r\n");
    assert!(w.session.is_passthrough());
    assert!(events(&mut w).contains(&Event::Passthrough(PassthroughReason::Monitor)));
    assert_eq!(w.advance(10_000), TickAction::None);
}

#[test]
fn a_tls_client_makes_the_filter_pass_through_at_once() {
    let mut w = world();
    w.client(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    assert!(w.session.is_passthrough());
    assert_eq!(
        events(&mut w),
        vec![Event::Passthrough(PassthroughReason::Tls)]
    );
    assert_eq!(w.advance(60_000), TickAction::None);
}

#[test]
fn monitor_after_a_ping_still_removes_its_reply() {
    let mut w = world();
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    w.client(&cmd(&["MONITOR"]));
    let mut bytes = PONG.to_vec();
    bytes.extend_from_slice(b"+OK\r\n+1700000000.000000 [0 127.0.0.1:1] \"GET\" \"a\"\r\n");
    w.server(&bytes);
    assert_eq!(w.to_client, &bytes[PONG.len()..]);
}

#[test]
fn hello_error_keeps_the_protocol() {
    let mut w = world();
    w.client(&cmd(&["HELLO", "3"]));
    w.server(b"-NOPROTO sorry\r\n");
    w.client(&cmd(&["SUBSCRIBE", "ch"]));
    w.server(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    w.server(PONG_RESP2_SUB);
    assert_eq!(
        w.to_client,
        b"-NOPROTO sorry\r\n*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
}

#[test]
fn error_reply_to_the_ping_before_auth_is_removed() {
    let mut w = world();
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    w.server(b"-NOAUTH Authentication required.\r\n");
    assert!(w.to_client.is_empty());
    assert!(events(&mut w).contains(&Event::KeepaliveAnswered));
}

#[test]
fn unexpected_reply_makes_it_pass_through_untouched() {
    let mut w = world();
    w.server(b"-ERR max number of clients reached\r\n");
    assert_eq!(w.to_client, b"-ERR max number of clients reached\r\n");
    assert!(w.session.is_passthrough());
    assert!(matches!(
        events(&mut w).as_slice(),
        [Event::Passthrough(PassthroughReason::LostTrack(_))]
    ));
}

#[test]
fn a_filter_place_holding_something_else_is_not_removed() {
    let mut w = world();
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    w.server(b"+PONG\r\n");
    assert_eq!(w.to_client, b"+PONG\r\n");
    assert!(w.session.is_passthrough());
}

#[test]
fn malformed_reply_passes_through_byte_for_byte() {
    let mut w = world();
    w.client(&cmd(&["GET", "a"]));
    w.server(b"?garbage\r\n");
    assert_eq!(w.to_client, b"?garbage\r\n");
    assert!(w.session.is_passthrough());
}

#[test]
fn malformed_request_passes_through_and_pending_pong_is_still_removed() {
    let mut w = world();
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    w.client(b"*1\r\n:oops\r\n");
    assert!(
        w.to_redis.ends_with(b"*1\r\n:oops\r\n"),
        "client bytes pass untouched"
    );
    let mut bytes = PONG.to_vec();
    bytes.extend_from_slice(b"-ERR Protocol error: expected '$', got ':'\r\n");
    w.server(&bytes);
    assert_eq!(
        w.to_client,
        b"-ERR Protocol error: expected '$', got ':'\r\n"
    );
    assert!(w.session.is_passthrough());
}

#[test]
fn refused_injection_closes_only_an_idle_connection() {
    let mut w = world();
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    assert_eq!(
        w.session.ping_refused(w.now),
        TickAction::Close(CloseReason::InjectionRefused)
    );
    let ev = events(&mut w);
    assert!(ev.contains(&Event::KeepaliveRefused));
    assert!(ev.contains(&Event::ReconnectSignal(CloseReason::InjectionRefused)));
}

#[test]
fn upstream_close_while_idle_is_a_reconnect_signal() {
    let mut w = world();
    w.client(&cmd(&["GET", "a"]));
    w.server(b"$-1\r\n");
    assert!(w.session.server_closed(w.now));
    assert!(events(&mut w).contains(&Event::ReconnectSignal(CloseReason::ServerClosed)));

    let mut busy = world();
    busy.client(&cmd(&["GET", "a"]));
    assert!(
        !busy.session.server_closed(busy.now),
        "a command was in flight: not a clean signal"
    );
}

#[test]
fn close_after_quit_is_not_a_reconnect_signal() {
    let mut w = world();
    w.client(&cmd(&["QUIT"]));
    w.server(b"+OK\r\n");
    assert!(!w.session.server_closed(w.now));
    assert!(events(&mut w).is_empty());
}

#[test]
fn resp2_after_the_last_unsubscribe_the_bulk_reply_is_removed() {
    let mut w = world();
    w.client(&cmd(&["SUBSCRIBE", "ch"]));
    w.server(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    w.server(PONG_RESP2_SUB);
    w.client(&cmd(&["UNSUBSCRIBE", "ch"]));
    w.server(b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n");
    // Back in normal mode Redis answers PING <token> with a plain bulk string.
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    w.server(PONG);
    w.client(&cmd(&["GET", "a"]));
    w.server(b"$-1\r\n");
    assert!(w.to_client.ends_with(b":0\r\n$-1\r\n"));
    assert!(!w.session.is_passthrough(), "{:?}", events(&mut w));
}

#[test]
fn a_connection_redis_never_answered_is_not_a_reconnect_signal() {
    let mut w = world();
    assert!(
        !w.session.server_closed(w.now),
        "Envoy could not connect: not a dead idle link"
    );
    assert!(events(&mut w).is_empty());
}

#[test]
fn client_close_is_not_a_reconnect_signal() {
    let mut w = world();
    w.client(&cmd(&["PING"]));
    w.server(b"+PONG\r\n");
    w.session.client_closed();
    assert!(!w.session.server_closed(w.now));
    assert!(events(&mut w).is_empty());
    assert_eq!(
        w.advance(10_000),
        TickAction::None,
        "no keepalive on a closing connection"
    );
}

#[test]
fn a_command_behind_an_unanswered_ping_is_held_and_never_sent_if_it_dies() {
    let mut w = world();
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    w.client(&cmd(&["SET", "a", "1"]));
    assert_eq!(
        w.to_redis_since_mark(),
        PING,
        "the SET waits behind the PING"
    );
    assert_eq!(w.advance(500), TickAction::Close(CloseReason::ProbeFailed));
    let ev = events(&mut w);
    assert!(ev.contains(&Event::KeepaliveFailed), "{ev:?}");
    assert!(ev.contains(&Event::ProbeFailed), "{ev:?}");
    assert!(
        ev.iter().any(|e| matches!(e, Event::IdleDeath { .. })),
        "{ev:?}"
    );
    assert!(!w.to_redis.ends_with(&cmd(&["SET", "a", "1"])));
}

#[test]
fn a_command_behind_a_ping_follows_its_answer() {
    let mut w = world();
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    w.client(&cmd(&["SET", "a", "1"]));
    w.server(PONG);
    // Released: the adapter puts it back on the wire after the PONG.
    assert_eq!(
        w.to_redis_since_mark(),
        [PING, &cmd(&["SET", "a", "1"])].concat()
    );
    let ev = events(&mut w);
    assert!(ev.contains(&Event::KeepaliveAnswered), "{ev:?}");
    assert!(
        !ev.iter().any(|e| matches!(e, Event::ProbePassed { .. })),
        "{ev:?}"
    );
    w.server(b"+OK\r\n");
    assert_eq!(w.to_client, b"+OK\r\n");
}

#[test]
fn redis_closing_a_busy_connection_is_a_busy_death() {
    let mut w = world();
    w.client(&cmd(&["GET", "a"]));
    w.server(b"$-1\r\n");
    w.client(&cmd(&["GET", "a"]));
    events(&mut w);
    assert!(!w.session.server_closed(10));
    assert_eq!(events(&mut w), vec![Event::BusyDeath]);
}

#[test]
fn inline_commands_are_followed() {
    let mut w = world();
    w.client(b"PING\r\nGET a\r\n");
    w.server(b"+PONG\r\n$-1\r\n");
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    w.server(PONG);
    assert_eq!(w.to_client, b"+PONG\r\n$-1\r\n");
}

#[test]
fn partial_client_command_blocks_the_keepalive() {
    let mut w = world();
    w.client(b"*2\r\n$3\r\nGET\r\n$1\r");
    assert_eq!(w.advance(5_000), TickAction::None);
    w.client(b"\na\r\n");
    w.server(b"$-1\r\n");
    assert_eq!(w.advance(1_000), TickAction::SendPing);
}

#[test]
fn large_values_are_skipped_not_read() {
    let mut w = world();
    let value = vec![b'x'; 1_000_000];
    let mut set = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", value.len()).into_bytes();
    set.extend_from_slice(&value);
    set.extend_from_slice(b"\r\n");
    w.client(&set);
    let mut reply = format!("${}\r\n", value.len()).into_bytes();
    reply.extend_from_slice(&value);
    reply.extend_from_slice(b"\r\n");
    w.client(&cmd(&["GET", "k"]));
    w.server(b"+OK\r\n");
    w.server(&reply);
    assert!(
        w.bytes_read < 20_000,
        "read {} bytes of ~2 MB",
        w.bytes_read
    );
    assert_eq!(w.advance(1_000), TickAction::SendPing);
}

#[test]
fn ping_and_its_replies_are_what_redis_protocol_encodes() {
    use redis_protocol::resp2::{encode::encode, types::OwnedFrame};
    let bulk = |b: &[u8]| OwnedFrame::BulkString(b.to_vec());
    let encode = |f: &OwnedFrame| {
        let mut out = vec![0u8; 256];
        let n = encode(&mut out, f, false).unwrap();
        out.truncate(n);
        out
    };
    assert_eq!(
        encode(&OwnedFrame::Array(vec![
            bulk(b"PING"),
            bulk(b"redis-idle-guard")
        ])),
        PING
    );
    assert_eq!(encode(&bulk(b"redis-idle-guard")), PONG);
    assert_eq!(
        encode(&OwnedFrame::Array(vec![
            bulk(b"pong"),
            bulk(b"redis-idle-guard")
        ])),
        PONG_RESP2_SUB
    );
}

// ---- idle spells: the evidence the learned cutoff is built from ----

fn spells(w: &mut World) -> Vec<Event> {
    events(w)
        .into_iter()
        .filter(|e| matches!(e, Event::IdleSurvived { .. } | Event::IdleDeath { .. }))
        .collect()
}

#[test]
fn an_answered_keepalive_is_a_survived_spell() {
    let mut w = world();
    w.client(&cmd(&["GET", "a"]));
    w.server(b"$-1\r\n");
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    w.advance(20);
    w.server(PONG);
    assert_eq!(spells(&mut w), vec![Event::IdleSurvived { idle_ms: 1_000 }]);
}

#[test]
fn a_command_after_a_long_spell_is_reported_when_answered_and_short_ones_are_not() {
    let mut w = World::new(Config {
        keepalive_interval: None,
        ping_timeout: 500,
        probe_after: None,
        learn: None,
    });
    w.client(&cmd(&["GET", "a"]));
    w.server(b"$-1\r\n");
    w.now += 400;
    w.client(&cmd(&["GET", "a"]));
    w.server(b"$-1\r\n");
    assert_eq!(spells(&mut w), vec![], "400 ms is below MIN_REPORTED_SPELL");
    w.now += 2_500;
    w.client(&cmd(&["GET", "a"]));
    w.now += 1;
    w.server(b"$-1\r\n");
    assert_eq!(spells(&mut w), vec![Event::IdleSurvived { idle_ms: 2_500 }]);
}

#[test]
fn an_unanswered_keepalive_is_a_death_after_the_spell_it_was_sent_after() {
    let mut w = world();
    w.client(&cmd(&["GET", "a"]));
    w.server(b"$-1\r\n");
    assert_eq!(w.advance(1_000), TickAction::SendPing);
    assert_eq!(w.advance(500), TickAction::Close(CloseReason::PingTimeout));
    assert_eq!(spells(&mut w), vec![Event::IdleDeath { idle_ms: 1_000 }]);
}

#[test]
fn a_fin_while_idle_is_a_death_after_the_silence_so_far_and_a_busy_one_is_not() {
    let mut w = world();
    w.client(&cmd(&["GET", "a"]));
    w.server(b"$-1\r\n");
    w.now += 700;
    assert!(w.session.server_closed(w.now));
    assert_eq!(spells(&mut w), vec![Event::IdleDeath { idle_ms: 700 }]);

    let mut busy = world();
    busy.client(&cmd(&["GET", "a"]));
    busy.now += 700;
    assert!(!busy.session.server_closed(busy.now));
    assert_eq!(
        spells(&mut busy),
        vec![],
        "a command was in flight: not an idle death"
    );
}

#[test]
fn a_close_after_passthrough_is_neither_a_death_nor_a_signal() {
    let mut w = world();
    w.client(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    w.server(b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03");
    events(&mut w);
    w.now += 10_000;
    assert!(!w.session.server_closed(w.now));
    assert_eq!(events(&mut w), vec![]);
}

#[test]
fn a_spread_keepalive_comes_up_to_a_fifth_of_the_interval_early_and_never_late() {
    use redis_idle_guard::session::{spread_early, SPREAD_DIVISOR};
    for spread in [0, 1, 12_345, 32_768, u16::MAX] {
        let mut w = world();
        w.session.spread_keepalives(spread);
        w.client(&cmd(&["GET", "k"]));
        w.server(b"$-1\r\n");
        let due = 1_000 - spread_early(1_000, spread);
        assert!((800..=1_000).contains(&due), "spread {spread}: {due}");
        assert_eq!(w.advance(due - 1), TickAction::None, "spread {spread}");
        assert_eq!(w.advance(1), TickAction::SendPing, "spread {spread}");
        // Answered: the next one comes as much earlier than the interval again.
        w.server(PONG);
        assert_eq!(w.advance(due - 1), TickAction::None);
        assert_eq!(w.advance(1), TickAction::SendPing);
        // A learned interval keeps the connection's spread.
        w.server(PONG);
        w.session.set_keepalive_interval(Some(4_000));
        let due = 4_000 - spread_early(4_000, spread);
        assert_eq!(w.advance(due - 1), TickAction::None);
        assert_eq!(w.advance(1), TickAction::SendPing);
    }
    // The defaults' 15 s keepalive covers every cutoff of 30 s or more: spread, it comes
    // between 12 s and 15 s, never later.
    for spread in (0..=u16::MAX).step_by(257).chain([u16::MAX]) {
        let early = spread_early(15_000, spread);
        assert!(early <= 15_000 / SPREAD_DIVISOR, "{spread}: {early}");
    }
    assert_eq!(spread_early(15_000, u16::MAX), 2_999);
    // No overflow, however long the interval.
    assert!(spread_early(u64::MAX, u16::MAX) <= u64::MAX / SPREAD_DIVISOR);
}
