//! Probe before stale reuse, on the real `.wasm` under the Envoy-faithful host: a command that
//! arrives after `probe_after` without a byte from Redis is held, a PING goes first, and the
//! command follows the answer, or is never sent.

use crate::host::{cmd, stat, warm, Envoy, Faults, PING, PONG};

/// Keepalive off (so the link goes stale), probes after 2 s, 500 ms to answer.
const CONFIG: &str =
    r#"{"keepalive_interval": "0s", "probe_after": "2s", "ping_timeout": "500ms"}"#;
use crate::host::stat::{PROBE_FAILED, PROBE_HELD, PROBE_PASSED, PROBE_WAIT_MS};

#[test]
fn a_command_after_probe_after_waits_for_the_pings_answer() {
    let mut e = Envoy::load(CONFIG).unwrap();
    assert_eq!(
        e.tick_period_ms(),
        50,
        "probes need the timer even with keepalive off"
    );
    let c = warm(&mut e);
    e.advance(2_000);
    assert_eq!(e.take_redis(c), b"", "no keepalive: it is off");
    e.client_send(c, &cmd(&["INCR", "n"]));
    assert_eq!(
        e.take_redis(c),
        PING,
        "not one byte of the command before the PING's answer"
    );
    assert_eq!(
        e.held(c),
        b"",
        "the command is held in module memory, not in Envoy's buffer"
    );
    e.advance(3);
    e.redis_send(c, PONG);
    assert_eq!(
        e.take_redis(c),
        cmd(&["INCR", "n"]),
        "the command follows the answer"
    );
    e.redis_send(c, b":1\r\n");
    assert_eq!(e.take_client(c), b":1\r\n");
    assert_eq!(e.stat(PROBE_HELD), 1);
    assert_eq!(e.stat(PROBE_PASSED), 1);
    assert_eq!(e.histogram(PROBE_WAIT_MS), vec![3]);
    assert_eq!(
        e.stat(stat::ANSWERED),
        0,
        "a probe is not counted as a keepalive"
    );
}

#[test]
fn before_probe_after_nothing_is_held() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.advance(1_999);
    e.client_send(c, &cmd(&["INCR", "n"]));
    assert_eq!(e.take_redis(c), cmd(&["INCR", "n"]));
    assert_eq!(e.stat(PROBE_HELD), 0);
}

#[test]
fn bytes_arriving_while_held_follow_in_order() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.advance(5_000);
    let pipeline = [
        cmd(&["SET", "a", "1"]),
        cmd(&["INCR", "n"]),
        cmd(&["GET", "a"]),
    ]
    .concat();
    // The pipeline arrives in three reads, cut mid-command, while the probe is out.
    e.client_send(c, &pipeline[..10]);
    assert_eq!(e.take_redis(c), PING);
    e.client_send(c, &pipeline[10..30]);
    e.client_send(c, &pipeline[30..]);
    assert_eq!(e.take_redis(c), b"");
    // The answer arrives in two pieces.
    e.redis_send(c, &PONG[..5]);
    assert_eq!(e.take_redis(c), b"");
    e.redis_send(c, &PONG[5..]);
    assert_eq!(e.take_redis(c), pipeline);
    e.redis_send(c, b"+OK\r\n:1\r\n$1\r\n1\r\n");
    assert_eq!(e.take_client(c), b"+OK\r\n:1\r\n$1\r\n1\r\n");
}

#[test]
fn no_answer_closes_the_client_and_the_command_is_never_sent() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.advance(10_000);
    e.client_send(c, &cmd(&["INCR", "n"]));
    assert_eq!(e.take_redis(c), PING);
    e.advance(499);
    assert!(e.is_open(c));
    e.advance(1);
    assert!(!e.is_open(c));
    assert!(e.client_saw_eof(c));
    assert_eq!(e.take_redis(c), b"", "the held command reached Redis");
    assert_eq!(e.take_client(c), b"");
    assert_eq!(e.stat(PROBE_FAILED), 1);
    assert_eq!(e.stat(stat::CONNECTIONS), 0);
}

#[test]
fn redis_closing_during_the_probe_never_gets_the_command() {
    for reset in [false, true] {
        let mut e = Envoy::load(CONFIG).unwrap();
        let c = warm(&mut e);
        e.advance(10_000);
        e.client_send(c, &cmd(&["INCR", "n"]));
        assert_eq!(e.take_redis(c), PING);
        if reset {
            e.redis_reset(c);
        } else {
            e.redis_close(c);
        }
        assert!(e.client_saw_eof(c));
        assert_eq!(e.take_redis(c), b"");
        assert_eq!(e.stat(PROBE_FAILED), 1, "reset={reset}");
        assert_eq!(
            e.stat(stat::RECONNECT),
            0,
            "a close with a command pending is not an idle signal"
        );
    }
}

#[test]
fn an_error_answer_still_proves_the_link_and_releases() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.advance(10_000);
    e.client_send(c, &cmd(&["GET", "k"]));
    assert_eq!(e.take_redis(c), PING);
    e.redis_send(c, b"-LOADING Redis is loading the dataset in memory\r\n");
    assert_eq!(e.take_redis(c), cmd(&["GET", "k"]));
    assert_eq!(e.take_client(c), b"");
    assert_eq!(e.stat(PROBE_PASSED), 1);
}

#[test]
fn the_clients_fin_while_held_sends_the_command_then_the_fin() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.advance(10_000);
    e.client_send(c, &cmd(&["INCR", "n"]));
    assert_eq!(e.take_redis(c), PING);
    e.client_close(c);
    assert_eq!(
        e.take_redis(c),
        cmd(&["INCR", "n"]),
        "held bytes go before the FIN"
    );
    assert!(e.redis_saw_end(c));
    e.redis_send(c, &[PONG, b":1\r\n"].concat());
    assert_eq!(e.take_client(c), b":1\r\n");
}

#[test]
fn a_huge_pipeline_is_not_held_but_follows_the_ping() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.advance(10_000);
    let first = cmd(&["SET", "k", "v"]);
    e.client_send(c, &first);
    assert_eq!(e.take_redis(c), PING);
    let big = cmd(&["SET", "big", &"x".repeat(70_000)]);
    e.client_send(c, &big);
    assert_eq!(
        e.take_redis(c),
        [first, big].concat(),
        "over 64 KiB held: released behind the PING"
    );
    e.redis_send(c, &[PONG, b"+OK\r\n+OK\r\n"].concat());
    assert_eq!(e.take_client(c), b"+OK\r\n+OK\r\n");
    // The probe itself still completes: its PING was answered.
    assert_eq!(e.stat(PROBE_HELD), 1);
    assert_eq!(e.stat(PROBE_PASSED), 1);
}

#[test]
fn a_probe_that_let_its_bytes_go_early_fails_without_closing() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.advance(10_000);
    e.client_send(c, &cmd(&["SET", "k", "v"]));
    e.client_send(c, &cmd(&["SET", "big", &"x".repeat(70_000)]));
    e.take_redis(c);
    e.advance(600);
    // The commands are on the wire already: closing would only lose their replies.
    assert!(e.is_open(c));
    assert_eq!(e.stat(PROBE_FAILED), 1);
    e.redis_send(c, &[PONG, b"+OK\r\n+OK\r\n"].concat());
    assert_eq!(e.take_client(c), b"+OK\r\n+OK\r\n");
}

#[test]
fn a_fresh_connection_is_not_probed() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = e.connect();
    e.advance(1_000);
    e.client_send(c, &cmd(&["GET", "k"]));
    assert_eq!(e.take_redis(c), cmd(&["GET", "k"]));
}

#[test]
fn keepalives_answered_keep_the_link_proven() {
    let mut e = Envoy::load(
        r#"{"keepalive_interval": "1s", "probe_after": "2s", "ping_timeout": "500ms"}"#,
    )
    .unwrap();
    let c = warm(&mut e);
    for _ in 0..10 {
        e.advance(1_000);
        assert_eq!(e.take_redis(c), PING);
        e.redis_send(c, PONG);
    }
    e.advance(500);
    e.client_send(c, &cmd(&["GET", "k"]));
    assert_eq!(
        e.take_redis(c),
        cmd(&["GET", "k"]),
        "a link answering keepalives needs no probe"
    );
    assert_eq!(e.stat(PROBE_HELD), 0);
}

#[test]
fn probe_off_sends_stale_commands_at_once() {
    let mut e = Envoy::load(r#"{"keepalive_interval": "0s", "probe_after": "0s"}"#).unwrap();
    assert_eq!(e.tick_period_ms(), 0);
    let c = warm(&mut e);
    e.advance(3_600_000);
    e.client_send(c, &cmd(&["GET", "k"]));
    assert_eq!(e.take_redis(c), cmd(&["GET", "k"]));
}

#[test]
fn host_refusing_the_release_closes_without_sending() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.advance(10_000);
    e.client_send(c, &cmd(&["INCR", "n"]));
    assert_eq!(e.take_redis(c), PING);
    e.set_faults(Faults {
        no_paused_buffer: true,
        ..Faults::default()
    });
    e.redis_send(c, PONG);
    assert_eq!(e.take_redis(c), b"");
    assert!(e.client_saw_eof(c));
    assert_eq!(e.stat(PROBE_FAILED), 1);
}
