//! The real `.wasm` under the Envoy-faithful host: dead links, closes, bad bytes from either
//! side, bad configuration, and a host that refuses what the filter asks.

use crate::host::{cmd, module_imports, stat, warm, ConnId, Envoy, Faults, Options, PING, PONG};

/// 1 s keepalive, 500 ms ping_timeout: tick every 50 ms.
const CONFIG: &str = r#"{"keepalive_interval": "1s", "ping_timeout": "500ms"}"#;

#[test]
fn unanswered_keepalive_closes_the_idle_client_after_ping_timeout() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
    e.advance(499);
    assert!(e.is_open(c), "closed before ping_timeout");
    e.advance(1);
    assert!(!e.is_open(c));
    assert!(
        e.client_saw_eof(c),
        "the client must see the close: it is the reconnect signal"
    );
    assert!(e.redis_saw_end(c), "tcp_proxy closes Redis's side too");
    assert_eq!(
        e.take_client(c),
        b"",
        "the client saw bytes it did not ask for"
    );
    assert_eq!(e.stat(stat::FAILED), 1);
    assert_eq!(e.stat(stat::RECONNECT), 1);
    assert_eq!(e.stat(stat::CONNECTIONS), 0);
    assert!(e.log_contains("unanswered"));
}

#[test]
fn a_command_behind_an_unanswered_keepalive_is_held_and_never_sent_if_it_dies() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
    // The command comes while the keepalive is still unanswered: it waits behind it.
    e.client_send(c, &cmd(&["INCR", "n"]));
    assert_eq!(e.take_redis(c), b"", "sent on a link that may be dead");
    e.advance(500);
    assert!(!e.is_open(c), "the link is dead: the client must reconnect");
    assert!(e.client_saw_eof(c));
    assert_eq!(
        e.take_redis(c),
        b"",
        "the command was never sent: a retry is safe"
    );
    assert_eq!(e.stat(stat::FAILED), 1);
    assert_eq!(e.stat(stat::PROBE_FAILED), 1);
}

#[test]
fn a_command_behind_a_keepalive_follows_its_answer() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
    e.client_send(c, &cmd(&["INCR", "n"]));
    assert_eq!(e.take_redis(c), b"");
    e.redis_send(c, PONG);
    assert_eq!(e.take_redis(c), cmd(&["INCR", "n"]));
    e.redis_send(c, b":1\r\n");
    assert_eq!(e.take_client(c), b":1\r\n");
    assert_eq!(e.stat(stat::ANSWERED), 1);
    assert_eq!(e.stat(stat::PROBE_HELD), 0, "no PING of its own");
}

#[test]
fn a_keepalive_behind_a_blocked_command_that_times_out_does_not_close() {
    // BLPOP is owed a reply that may take long; a PING behind it answers only after it. If
    // Redis is only slow, closing would lose the reply: the failure is counted, not acted on.
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.client_send(c, &cmd(&["BLPOP", "q", "0"]));
    e.advance(1000);
    assert_eq!(
        e.take_redis(c),
        [cmd(&["BLPOP", "q", "0"]), PING.to_vec()].concat()
    );
    e.advance(60_000);
    assert!(e.is_open(c));
    e.redis_send(
        c,
        &[b"*2\r\n$1\r\nq\r\n$1\r\nv\r\n".as_slice(), PONG].concat(),
    );
    assert_eq!(e.take_client(c), b"*2\r\n$1\r\nq\r\n$1\r\nv\r\n");
}

#[test]
fn redis_closing_an_idle_connection_is_passed_on_as_a_reconnect_signal() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.advance(300);
    e.redis_close(c);
    // The FIN reaches the client at once (tcp_proxy half-closes); its pool reconnects.
    assert!(e.client_saw_eof(c));
    assert_eq!(e.stat(stat::RECONNECT), 1);
    assert_eq!(e.take_client(c), b"");
    e.client_close(c);
    assert!(!e.is_open(c));
    assert_eq!(e.stat(stat::RECONNECT), 1, "one signal per dead link");
}

#[test]
fn redis_reset_of_an_idle_connection_is_a_reconnect_signal() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.redis_reset(c);
    assert!(e.client_saw_eof(c));
    assert_eq!(e.stat(stat::RECONNECT), 1);
}

#[test]
fn redis_closing_with_a_command_in_flight_is_not_counted_as_a_reconnect_signal() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.client_send(c, &cmd(&["GET", "k"]));
    e.redis_close(c);
    assert!(e.client_saw_eof(c));
    assert_eq!(e.stat(stat::RECONNECT), 0);
}

#[test]
fn quit_and_client_close_are_not_reconnect_signals() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.client_send(c, &cmd(&["QUIT"]));
    e.redis_send(c, b"+OK\r\n");
    e.redis_close(c);
    assert_eq!(e.take_client(c), b"+OK\r\n");
    // tcp_proxy passes Redis's FIN on; the connection ends when the client closes too.
    assert!(e.client_saw_eof(c));
    e.client_close(c);
    assert!(!e.is_open(c));
    let d = warm(&mut e);
    e.client_close(d);
    assert!(e.redis_saw_end(d), "the client's FIN reaches Redis");
    e.redis_close(d);
    assert!(!e.is_open(d));
    assert_eq!(e.stat(stat::RECONNECT), 0);
    assert_eq!(e.stat(stat::CONNECTIONS), 0);
}

#[test]
fn bytes_that_are_not_resp_from_the_client_pass_through_untouched() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    let junk = b"*2\r\n$x\r\nGET\r\n\x00\xff garbage";
    e.client_send(c, junk);
    assert_eq!(e.take_redis(c), junk);
    e.redis_send(c, b"-ERR Protocol error\r\n");
    assert_eq!(e.take_client(c), b"-ERR Protocol error\r\n");
    assert_eq!(e.stat(stat::PASSTHROUGH), 1);
    e.advance(10_000);
    assert_eq!(e.take_redis(c), b"", "no keepalive in passthrough");
    // And everything after flows untouched, including something that looks like our reply.
    e.client_send(c, &cmd(&["GET", "k"]));
    e.redis_send(c, PONG);
    assert_eq!(e.take_redis(c), cmd(&["GET", "k"]));
    assert_eq!(e.take_client(c), PONG);
    assert!(e.is_open(c));
}

#[test]
fn a_client_speaking_tls_is_passed_through_untouched() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = e.connect();
    // The start of a ClientHello: a handshake record, TLS 1.0 record version, then the body.
    let hello = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03 random bytes";
    e.client_send(c, hello);
    assert_eq!(e.take_redis(c), hello);
    let server_hello = b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03";
    e.redis_send(c, server_hello);
    assert_eq!(e.take_client(c), server_hello);
    assert_eq!(e.stat(stat::PASSTHROUGH), 1);
    assert_eq!(e.stat(stat::PASSTHROUGH_TLS), 1);
    e.advance(60_000);
    assert_eq!(e.take_redis(c), b"", "never a PING inside a TLS session");
    assert!(e.is_open(c));
}

#[test]
fn bytes_that_are_not_resp_from_redis_pass_through_untouched() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.client_send(c, &cmd(&["GET", "k"]));
    e.take_redis(c);
    let junk = b"?what is this\r\n";
    e.redis_send(c, junk);
    assert_eq!(e.take_client(c), junk);
    assert_eq!(e.stat(stat::PASSTHROUGH), 1);
    e.advance(10_000);
    assert_eq!(e.take_redis(c), b"");
    assert!(e.is_open(c));
}

#[test]
fn a_reply_nobody_asked_for_makes_the_filter_pass_through() {
    let mut e = Envoy::load(CONFIG).unwrap();
    let c = warm(&mut e);
    e.redis_send(c, b"+OK\r\n");
    assert_eq!(e.take_client(c), b"+OK\r\n");
    assert_eq!(e.stat(stat::PASSTHROUGH), 1);
}

#[test]
fn bad_config_fails_the_load_and_names_the_field() {
    for (config, field) in [
        (r#"{"keepalive_intervl": "1s"}"#, "keepalive_intervl"),
        (r#"{"keepalive_interval": "soon"}"#, "keepalive_interval"),
        (r#"{"keepalive_interval": "10ms"}"#, "keepalive_interval"),
        (r#"{"ping_timeout": -1}"#, "ping_timeout"),
        (r#"{"ping_timeout": "1ms"}"#, "ping_timeout"),
    ] {
        let err = Envoy::load(config)
            .err()
            .unwrap_or_else(|| panic!("{config} loaded"));
        assert_eq!(err.stage, "proxy_on_configure");
        assert!(
            err.logs
                .iter()
                .any(|l| l.level >= 3 && l.message.contains(field)),
            "{config}: no error log naming `{field}`: {err}"
        );
    }
    for config in [
        "",
        "{}",
        r#"{"keepalive_interval": "30s", "ping_timeout": "5s"}"#,
    ] {
        Envoy::load(config).unwrap_or_else(|e| panic!("{config:?} refused: {e}"));
    }
}

#[test]
fn host_refusing_the_injection_closes_the_idle_connection_instead() {
    let mut e = Envoy::start(Options {
        plugin_config: CONFIG.into(),
        faults: Faults {
            no_paused_buffer: true,
            ..Faults::default()
        },
        ..Options::default()
    })
    .unwrap();
    let c = warm(&mut e);
    e.advance(1000);
    assert_eq!(
        e.take_redis(c),
        b"",
        "nothing can reach Redis without the paused buffer"
    );
    assert!(
        !e.is_open(c),
        "an idle connection the filter cannot keep alive is closed while idle"
    );
    assert!(e.client_saw_eof(c));
    assert_eq!(e.take_client(c), b"");
    assert_eq!(e.stat(stat::REFUSED), 1);
    assert_eq!(e.stat(stat::RECONNECT), 1);
}

#[test]
fn a_connection_that_never_sent_a_byte_is_closed_at_the_interval_when_probes_are_off() {
    // No paused read buffer to carry a PING, and no probe to guard its first command: the
    // fallback closes it while idle, before it can go stale.
    let mut e = Envoy::load(
        r#"{"keepalive_interval": "1s", "ping_timeout": "500ms", "probe_after": "0s"}"#,
    )
    .unwrap();
    let c = e.connect();
    e.advance(1000);
    assert!(!e.is_open(c));
    assert_eq!(e.stat(stat::REFUSED), 1);
    assert_eq!(e.stat(stat::RECONNECT), 1);
}

#[test]
fn a_connection_that_never_sent_a_byte_is_kept_and_its_first_command_probed() {
    // A pool that opens connections ahead of use: no churn; the probe guards the first use.
    let mut e = Envoy::load(
        r#"{"keepalive_interval": "1s", "ping_timeout": "500ms", "probe_after": "3s"}"#,
    )
    .unwrap();
    let c = e.connect();
    e.advance(10_000);
    assert!(e.is_open(c));
    assert_eq!(e.stat(stat::REFUSED), 0);
    assert_eq!(e.take_redis(c), b"");
    e.client_send(c, &cmd(&["GET", "k"]));
    assert_eq!(
        e.take_redis(c),
        PING,
        "a first command after a long silence is probed"
    );
    e.redis_send(c, PONG);
    assert_eq!(e.take_redis(c), cmd(&["GET", "k"]));
    e.redis_send(c, b"$-1\r\n");
    assert_eq!(e.take_client(c), b"$-1\r\n");
    assert_eq!(e.stat("redis_idle_guard.probe.passed"), 1);
    // From now on the paused buffer exists: ordinary keepalives.
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
}

#[test]
fn host_refusing_continue_makes_the_filter_pass_through_without_losing_bytes() {
    let mut e = Envoy::start(Options {
        plugin_config: CONFIG.into(),
        faults: Faults {
            refuse_continue: true,
            ..Faults::default()
        },
        ..Options::default()
    })
    .unwrap();
    let c = e.connect();
    e.client_send(c, &cmd(&["GET", "k"]));
    assert_eq!(e.take_redis(c), cmd(&["GET", "k"]));
    e.redis_send(c, b"$-1\r\n");
    assert_eq!(e.take_client(c), b"$-1\r\n");
    assert_eq!(e.stat(stat::PASSTHROUGH), 1);
    e.client_send(c, &cmd(&["GET", "k"]));
    assert_eq!(e.take_redis(c), cmd(&["GET", "k"]));
}

#[test]
fn no_host_clock_means_pass_through() {
    let mut e = Envoy::start(Options {
        plugin_config: CONFIG.into(),
        faults: Faults {
            no_clock: true,
            ..Faults::default()
        },
        ..Options::default()
    })
    .unwrap();
    let c = e.connect();
    e.client_send(c, &cmd(&["GET", "k"]));
    assert_eq!(e.take_redis(c), cmd(&["GET", "k"]));
    e.advance(10_000);
    assert_eq!(e.take_redis(c), b"");
    assert!(e.is_open(c));
}

#[test]
fn no_stats_still_keeps_connections_alive() {
    let mut e = Envoy::start(Options {
        plugin_config: CONFIG.into(),
        faults: Faults {
            refuse_metrics: true,
            ..Faults::default()
        },
        ..Options::default()
    })
    .unwrap();
    let c = warm(&mut e);
    e.advance(1000);
    assert_eq!(e.take_redis(c), PING);
    e.redis_send(c, PONG);
    assert_eq!(e.take_client(c), b"");
    assert!(e.log_contains("stats disabled"));
}

#[test]
fn the_module_uses_only_host_calls_this_host_models() {
    // Every import is either modelled or traps loudly when called; this lists what the module
    // declares so a new dependency on the host shows up in review.
    let imports = module_imports();
    let used: Vec<&str> = imports
        .iter()
        .filter(|(_, implemented)| *implemented)
        .map(|(n, _)| n.as_str())
        .collect();
    for needed in [
        "proxy_get_buffer_bytes",
        "proxy_set_buffer_bytes",
        "proxy_continue_stream",
        "proxy_close_stream",
        "proxy_set_effective_context",
    ] {
        assert!(used.contains(&needed), "{needed} missing from {imports:?}");
    }
}

/// What one tick may close (`MAX_CLOSES_PER_TICK` in src/wasm/plugin.rs): Envoy carries out the
/// closes a tick asks for after it, each calling back into the VM, where the next queued close
/// is carried out: they nest, and a thousand overflowed V8's stack on Envoy 1.40. While closes
/// wait for their turn, the tick comes every 20 ms (`HURRIED_TICK_MS`).
const CLOSES_PER_TICK: usize = 100;
const HURRIED_TICK_MS: u32 = 20;

/// 600 idle connections PINGed within two ticks of each other, then never answered.
fn stalled_pool(e: &mut Envoy) -> Vec<ConnId> {
    assert_eq!(e.tick_period_ms(), 1_000);
    let conns: Vec<ConnId> = (0..600).map(|_| warm(e)).collect();
    e.advance(10_000);
    for &c in &conns {
        assert_eq!(e.take_redis(c), PING);
    }
    conns
}

#[test]
fn a_tick_closes_a_hundred_connections_at_most_and_the_rest_follow_at_a_faster_tick() {
    let mut e = Envoy::load(r#"{"keepalive_interval": "10s", "ping_timeout": "10s"}"#).unwrap();
    let conns = stalled_pool(&mut e);
    let mut open = conns.len();
    let mut closes = Vec::new(); // (ms, closed in that step, tick period after it)
    for _ in 0..(15_000 / HURRIED_TICK_MS) {
        // One tick at most per step: the tick never comes more often than this.
        e.advance(u64::from(HURRIED_TICK_MS));
        let still = conns.iter().filter(|&&c| e.is_open(c)).count();
        if still < open {
            closes.push((e.now_ms(), open - still, e.tick_period_ms()));
        }
        open = still;
    }
    assert_eq!(open, 0, "{closes:?}");
    assert!(
        closes.iter().all(|&(_, n, _)| n <= CLOSES_PER_TICK),
        "{closes:?}"
    );
    // Where more were due than a tick may close, the next tick came 20 ms later.
    assert!(closes
        .iter()
        .any(|&(_, n, p)| n == CLOSES_PER_TICK && p == HURRIED_TICK_MS));
    let (first, last) = (closes[0].0, closes[closes.len() - 1].0);
    assert!(
        last - first <= 2_000 + 2 * u64::from(HURRIED_TICK_MS),
        "{closes:?}"
    );
    // Once none wait, the tick is as configured again.
    assert_eq!(e.tick_period_ms(), 1_000);
    assert!(conns.iter().all(|&c| e.client_saw_eof(c)));
    assert_eq!(e.stat(stat::RECONNECT), conns.len() as i64);
}

#[test]
fn a_connection_waiting_for_its_close_is_spared_if_its_ping_is_answered_meanwhile() {
    let mut e = Envoy::load(r#"{"keepalive_interval": "10s", "ping_timeout": "10s"}"#).unwrap();
    let conns = stalled_pool(&mut e);
    // Advance to the first tick that closes connections.
    let mut open = conns.len();
    while open == conns.len() {
        e.advance(u64::from(HURRIED_TICK_MS));
        open = conns.iter().filter(|&&c| e.is_open(c)).count();
    }
    assert_eq!(
        conns.len() - open,
        CLOSES_PER_TICK,
        "more were due in that tick"
    );
    // Redis is back: the rest get their answers before their turn, and stay open.
    let waiting: Vec<ConnId> = conns.iter().copied().filter(|&c| e.is_open(c)).collect();
    for c in waiting {
        e.redis_send(c, PONG);
        assert_eq!(
            e.take_client(c),
            b"",
            "the filter's reply reached the client"
        );
    }
    e.advance(5_000);
    assert_eq!(conns.iter().filter(|&&c| e.is_open(c)).count(), open);
    assert_eq!(e.stat(stat::RECONNECT), (conns.len() - open) as i64);
    assert_eq!(e.tick_period_ms(), 1_000);
}
