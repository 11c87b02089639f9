//! The real `.wasm` under the Envoy-faithful host: when keepalives go out, and how their replies
//! are removed, byte for byte, however Redis's bytes are cut.

use crate::host::{cmd, stat, warm, ConnId, Envoy, PING, PONG};

/// 1 s keepalive, 10 s ping_timeout: tick every 100 ms, no closes in these tests.
const CONFIG: &str = r#"{"keepalive_interval": "1s", "ping_timeout": "10s"}"#;

#[test]
fn keepalive_goes_out_at_the_interval_not_before() {
    let mut e = Envoy::load(CONFIG).unwrap();
    assert_eq!(e.tick_period_ms(), 100);
    let c = warm(&mut e);
    e.advance(999);
    assert_eq!(e.take_redis(c), b"", "a PING before keepalive_interval");
    e.advance(1);
    assert_eq!(e.take_redis(c), PING);
    assert_eq!(e.stat(stat::SENT), 1);
    assert_eq!(e.histogram(stat::IDLE_MS), vec![1000]);
}

#[test]
fn one_keepalive_at_a_time() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
    // Redis is slow: no second PING while the first is unanswered.
    e.advance(5_000);
    assert_eq!(e.take_redis(c), b"");
    e.redis_send(c, PONG);
    assert_eq!(e.take_client(c), b"", "the client saw the filter's reply");
    assert_eq!(e.stat(stat::ANSWERED), 1);
    // The next one comes a full interval after the reply.
    e.advance(999);
    assert_eq!(e.take_redis(c), b"");
    e.advance(1);
    assert_eq!(e.take_redis(c), PING);
    assert_eq!(e.stat(stat::SENT), 2);
}

#[test]
fn client_traffic_pushes_the_keepalive_back() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    for _ in 0..5 {
        e.advance(900);
        e.client_send(c, &cmd(&["INCR", "n"]));
        e.redis_send(c, b":1\r\n");
    }
    assert_eq!(e.take_redis(c), cmd(&["INCR", "n"]).repeat(5));
    assert_eq!(e.stat(stat::SENT), 0);
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
}

#[test]
fn keepalives_keep_an_idle_connection_alive_for_an_hour() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    for _ in 0..3600 {
        e.advance(1000);
        assert_eq!(e.take_redis(c), PING);
        e.redis_send(c, PONG);
    }
    assert_eq!(e.take_client(c), b"");
    assert_eq!(e.stat(stat::SENT), 3600);
    assert_eq!(e.stat(stat::ANSWERED), 3600);
    assert!(e.is_open(c));
}

#[test]
fn reply_removed_when_split_at_every_byte() {
    for cut in 1..PONG.len() {
        let mut e = Envoy::load(CONFIG).unwrap();
        let c = warm(&mut e);
        e.advance(1000);
        assert_eq!(e.take_redis(c), PING);
        e.redis_send(c, &PONG[..cut]);
        e.redis_send(c, &PONG[cut..]);
        assert_eq!(e.take_client(c), b"", "split at {cut}");
        assert_eq!(e.stat(stat::ANSWERED), 1, "split at {cut}");
    }
}

#[test]
fn reply_removed_when_it_arrives_a_byte_at_a_time() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.advance(1000);
    e.take_redis(c);
    for b in PONG {
        e.redis_send(c, &[*b]);
    }
    assert_eq!(e.take_client(c), b"");
    assert_eq!(e.stat(stat::ANSWERED), 1);
}

/// Every way to cut `bytes` in two, delivered as two reads from Redis.
fn each_split(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    (0..=bytes.len()).map(move |i| bytes.split_at(i))
}

#[test]
fn reply_glued_to_the_next_reply_at_every_split() {
    let value = b"$3\r\nabc\r\n";
    let wire = [PONG, value].concat();
    for (a, b) in each_split(&wire) {
        let mut e = Envoy::load(CONFIG).unwrap();
        let c = warm(&mut e);
        e.advance(1000);
        assert_eq!(e.take_redis(c), PING);
        // The client's command waits behind the filter's unanswered PING, and follows its
        // answer; the reads cut the answer and the command's reply anywhere.
        e.client_send(c, &cmd(&["GET", "k"]));
        assert_eq!(e.take_redis(c), b"");
        e.redis_send(c, a);
        e.redis_send(c, b);
        assert_eq!(e.take_redis(c), cmd(&["GET", "k"]), "split at {}", a.len());
        assert_eq!(e.take_client(c), value, "split at {}", a.len());
    }
}

#[test]
fn reply_behind_a_blocked_commands_reply_at_every_split() {
    let popped = b"*2\r\n$1\r\nq\r\n$1\r\nv\r\n";
    let wire = [popped.as_slice(), PONG].concat();
    for (a, b) in each_split(&wire) {
        let mut e = Envoy::load(CONFIG).unwrap();
        let c = e.connect();
        e.client_send(c, &cmd(&["BLPOP", "q", "0"]));
        assert_eq!(e.take_redis(c), cmd(&["BLPOP", "q", "0"]));
        // Blocked: the PING queues behind BLPOP, so its reply comes after BLPOP's.
        e.advance(1000);
        assert_eq!(e.take_redis(c), PING);
        e.redis_send(c, a);
        e.redis_send(c, b);
        assert_eq!(e.take_client(c), popped, "split at {}", a.len());
        assert_eq!(e.stat(stat::ANSWERED), 1);
    }
}

#[test]
fn a_blocked_connection_gets_one_keepalive_per_interval_and_keeps_the_order() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = e.connect();
    e.client_send(c, &cmd(&["BLPOP", "q", "0"]));
    e.take_redis(c);
    e.advance(3_000);
    assert_eq!(e.take_redis(c), PING.repeat(3));
    // A pipelined command after the PINGs: its reply must follow theirs.
    e.client_send(c, &cmd(&["GET", "k"]));
    e.take_redis(c);
    let popped = b"*2\r\n$1\r\nq\r\n$1\r\nv\r\n";
    let wire = [popped.as_slice(), &PONG.repeat(3), b"$1\r\nx\r\n"].concat();
    e.redis_send(c, &wire);
    assert_eq!(
        e.take_client(c),
        [popped.as_slice(), b"$1\r\nx\r\n"].concat()
    );
    assert_eq!(e.stat(stat::ANSWERED), 3);
}

#[test]
fn pipelines_of_mixed_commands_with_keepalives_between() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = e.connect();
    let batch = [
        cmd(&["SET", "k", "v"]),
        cmd(&["GET", "k"]),
        cmd(&["PING"]),
        cmd(&["PING", "redis-idle-guard"]),
        b"INCR n\r\n".to_vec(),
        cmd(&["HGETALL", "h"]),
    ]
    .concat();
    let replies = [
        b"+OK\r\n".as_slice(),
        b"$1\r\nv\r\n",
        b"+PONG\r\n",
        // The application's own PING with our token: same bytes as ours, and it is its own.
        PONG,
        b":7\r\n",
        b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n",
    ]
    .concat();
    let mut expected = Vec::new();
    for round in 0..4 {
        // The pipeline goes in three reads, cut mid-command.
        e.client_send(c, &batch[..7]);
        e.client_send(c, &batch[7..50]);
        e.client_send(c, &batch[50..]);
        assert_eq!(e.take_redis(c), batch, "round {round}");
        // Replies come in reads cut at odd places.
        for chunk in replies.chunks(5 + round) {
            e.redis_send(c, chunk);
        }
        expected.extend_from_slice(&replies);
        e.advance(1000);
        assert_eq!(e.take_redis(c), PING, "round {round}");
        e.redis_send(c, PONG);
    }
    assert_eq!(e.take_client(c), expected);
    assert_eq!(e.stat(stat::SENT), 4);
    assert_eq!(e.stat(stat::ANSWERED), 4);
}

#[test]
fn many_connections_each_keep_their_own_schedule() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let conns: Vec<ConnId> = (0..50)
        .map(|i| {
            let c = warm(&mut e);
            e.advance(20 * (i % 5));
            c
        })
        .collect();
    e.advance(2_000);
    for c in &conns {
        assert_eq!(e.take_redis(*c), PING, "{c:?}");
        e.redis_send(*c, PONG);
        assert_eq!(e.take_client(*c), b"");
    }
    assert_eq!(e.stat(stat::CONNECTIONS), 50);
    for c in &conns {
        e.client_reset(*c);
    }
    assert_eq!(e.stat(stat::CONNECTIONS), 0);
}

#[test]
fn keepalive_off_sends_nothing() {
    let mut e = Envoy::load(r#"{"keepalive_interval": "0s"}"#).unwrap();
    let c = warm(&mut e);
    e.advance(3_600_000);
    assert_eq!(e.take_redis(c), b"");
    assert_eq!(e.stat(stat::SENT), 0);
}

#[test]
fn vm_memory_gauge_reports_the_linear_memory() {
    let mut e = Envoy::load(CONFIG).unwrap();
    warm(&mut e);
    e.advance(100);
    let bytes = e.stat("redis_idle_guard.vm_memory_bytes");
    assert!(bytes >= 65_536 && bytes % 65_536 == 0, "{bytes}");
}

#[test]
fn vm_memory_per_idle_connection() {
    // The VM's linear memory only grows, in 64 KiB pages: measure over many connections.
    let mut e = Envoy::load(CONFIG).unwrap();
    let warmup: Vec<ConnId> = (0..200).map(|_| warm(&mut e)).collect();
    e.advance(100);
    let before = e.stat("redis_idle_guard.vm_memory_bytes");
    let n = 10_000;
    let conns: Vec<ConnId> = (0..n).map(|_| warm(&mut e)).collect();
    e.advance(100);
    let after = e.stat("redis_idle_guard.vm_memory_bytes");
    let per = (after - before) as f64 / n as f64;
    eprintln!(
        "VM memory per idle connection: {per:.0} bytes ({n} connections, {before} -> {after})"
    );
    // Target: at most 512 bytes of VM memory per idle connection (deterministic here).
    assert!(per <= 512.0, "{per} bytes per idle connection");
    drop((warmup, conns));
}

#[test]
fn a_prompt_reply_is_timed_without_reading_the_clock() {
    const CLOCK: &str = "proxy_get_current_time_nanoseconds";
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    let clock_reads = |e: &Envoy| e.host_calls().get(CLOCK).copied().unwrap_or(0);
    let before = clock_reads(&e);
    e.client_send(c, &cmd(&["GET", "k"]));
    e.redis_send(c, b"$-1\r\n");
    assert_eq!(
        clock_reads(&e) - before,
        1,
        "only the request read the clock"
    );
    // A slow reply is timed as of its request: the keepalive may come that much earlier,
    // never later (the reply's arrival is activity the filter dates no later than it was).
    e.advance(300);
    e.client_send(c, &cmd(&["GET", "k"]));
    e.advance(400);
    e.redis_send(c, b"$-1\r\n");
    e.advance(599);
    assert_eq!(e.take_redis(c), cmd(&["GET", "k"]).repeat(2));
    e.advance(1);
    assert_eq!(e.take_redis(c), PING, "1 s after the request");
    // The PING's own answer is timed with the clock.
    let before = clock_reads(&e);
    e.redis_send(c, PONG);
    assert_eq!(clock_reads(&e) - before, 1);
    assert_eq!(e.take_client(c), b"$-1\r\n".repeat(2));
}
