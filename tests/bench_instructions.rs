//! A stable cost figure for the performance work: wasm instructions the real `.wasm` executes
//! per Redis request and per idle keepalive, counted with wasmtime's fuel under the test host
//! (tests/host, `Options::fuel`). Deterministic, so one run is enough and a change of a few
//! percent is real; unlike CPU time it does not move with the machine's load.
//!
//! Ignored by default (it measures, it checks nothing new). Run it with
//! `cargo test --test bench_instructions -- --ignored --nocapture`; `tests/bench/bench.py`
//! runs it and parses the `BENCH_INSTR {json}` lines.
//!
//! Workloads mirror redis-benchmark's (`-t get,set -d SIZE -P N -c 50`): 50 connections in
//! turn, the client's bytes arrive as one read per request (P1) or per pipeline batch (P16),
//! and each reply comes back from Redis as one read.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod host;

use host::{cmd, stat, ConnId, Envoy, Options, PING, PONG};
use redis_idle_guard::session::SPREAD_DIVISOR;
use std::collections::BTreeMap;

const CLIENTS: usize = 50;
/// redis-benchmark's key (without -r it sends the placeholder as is).
const KEY: &str = "key:__rand_int__";

fn start(plugin_config: &str) -> Envoy {
    Envoy::start(Options {
        plugin_config: plugin_config.into(),
        fuel: true,
        ..Options::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn host_call_delta(
    before: &BTreeMap<&'static str, u64>,
    after: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    after
        .iter()
        .map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn per(total: u64, n: usize) -> f64 {
    total as f64 / n as f64
}

fn calls_json(calls: &BTreeMap<&'static str, u64>, n: usize) -> String {
    let parts: Vec<String> = calls
        .iter()
        .map(|(k, v)| format!("\"{k}\":{:.2}", per(*v, n)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

#[derive(Clone, Copy)]
enum Op {
    Get,
    Set,
}

struct Workload {
    op: Op,
    pipeline: usize,
    size: usize,
    requests: usize,
}

impl Workload {
    fn name(&self) -> &'static str {
        match self.op {
            Op::Get => "GET",
            Op::Set => "SET",
        }
    }

    fn request(&self, value: &str) -> Vec<u8> {
        match self.op {
            Op::Get => cmd(&["GET", KEY]),
            Op::Set => cmd(&["SET", KEY, value]),
        }
    }

    fn reply(&self, value: &str) -> Vec<u8> {
        match self.op {
            Op::Get => format!("${}\r\n{value}\r\n", value.len()).into_bytes(),
            Op::Set => b"+OK\r\n".to_vec(),
        }
    }
}

/// Envoy hands a network filter at most this much per read of a busy socket (its 16 KiB read
/// slices); a 100 KB value arrives in several reads.
const READ: usize = 16 * 1024;

/// One batch (a request, or `pipeline` of them) on a connection: the client's reads, then
/// Redis's, each reply in reads of at most [`READ`]. Returns the fuel of each side.
fn round_trip(e: &mut Envoy, c: ConnId, batch: &[u8], reply: &[u8], n: usize) -> (u64, u64) {
    let f0 = e.fuel_used();
    for chunk in batch.chunks(READ) {
        e.client_send(c, chunk);
    }
    let f1 = e.fuel_used();
    for _ in 0..n {
        for chunk in reply.chunks(READ) {
            e.redis_send(c, chunk);
        }
    }
    let f2 = e.fuel_used();
    assert_eq!(e.take_redis(c), batch, "Redis must get the batch unchanged");
    let got = e.take_client(c);
    assert_eq!(
        got.len(),
        reply.len() * n,
        "the client must get every reply"
    );
    (f1 - f0, f2 - f1)
}

fn measure_requests(config_name: &str, plugin_config: &str, w: &Workload) {
    let mut e = start(plugin_config);
    let value = "x".repeat(w.size);
    let request = w.request(&value);
    let reply = w.reply(&value);
    let batch: Vec<u8> = request.repeat(w.pipeline);
    let conns: Vec<ConnId> = (0..CLIENTS).map(|_| e.connect()).collect();
    // Warm-up: every connection's first batch (session state, first allocations).
    for &c in &conns {
        round_trip(&mut e, c, &batch, &reply, w.pipeline);
    }
    let batches = w.requests / w.pipeline;
    let calls_before = e.host_calls().clone();
    let malloc_before = e.malloc_fuel();
    let (mut down, mut up) = (0u64, 0u64);
    for i in 0..batches {
        let (d, u) = round_trip(&mut e, conns[i % CLIENTS], &batch, &reply, w.pipeline);
        down += d;
        up += u;
    }
    let n = batches * w.pipeline;
    let calls = host_call_delta(&calls_before, e.host_calls());
    let call_total: u64 = calls.values().sum();
    let malloc = e.malloc_fuel() - malloc_before;
    assert_eq!(
        e.stat(stat::PASSTHROUGH),
        0,
        "the filter went to passthrough"
    );
    println!(
        "BENCH_INSTR {{\"kind\":\"request\",\"config\":\"{config_name}\",\"op\":\"{}\",\"pipeline\":{},\"size\":{},\"requests\":{n},\
\"fuel_downstream\":{:.1},\"fuel_upstream\":{:.1},\"fuel_total\":{:.1},\"fuel_malloc\":{:.1},\"host_calls\":{:.2},\"host_calls_by_name\":{}}}",
        w.name(),
        w.pipeline,
        w.size,
        per(down, n),
        per(up, n),
        per(down + up, n),
        per(malloc, n),
        per(call_total, n),
        calls_json(&calls, n),
    );
}

/// Idle connections kept alive: `n` connections warmed at the same instant, so their keepalives
/// fall due within the last fifth of the interval (their spread: a few ticks). Prints the cost
/// of an empty tick, of the due ticks per PING sent (less their empty-tick part beyond one, so
/// that the figure is one tick's), of removing each PONG, and the steady state (everything,
/// empty ticks included, per keepalive).
fn measure_keepalive(n: usize) {
    const INTERVAL_MS: u64 = 1_000;
    let mut e = start(r#"{"keepalive_interval": "1s", "ping_timeout": "5s"}"#);
    let tick_ms = u64::from(e.tick_period_ms());
    assert_eq!(tick_ms, 100);
    let conns: Vec<ConnId> = (0..n).map(|_| e.connect()).collect();
    for &c in &conns {
        e.client_send(c, &cmd(&["GET", "k"]));
        e.redis_send(c, b"$-1\r\n");
        e.take_redis(c);
        e.take_client(c);
    }
    // Empty ticks: nothing due before the earliest keepalive, a fifth of the interval early.
    let quiet_ms = INTERVAL_MS - INTERVAL_MS / SPREAD_DIVISOR - tick_ms;
    let f0 = e.fuel_used();
    e.advance(quiet_ms);
    let empty_ticks = (quiet_ms / tick_ms) as usize;
    let empty = e.fuel_used() - f0;
    assert_eq!(e.stat(stat::SENT), 0);

    // The ticks at which the connections are due.
    let due_ticks = ((INTERVAL_MS - quiet_ms) / tick_ms) as usize;
    let calls_before = e.host_calls().clone();
    let f0 = e.fuel_used();
    e.advance(INTERVAL_MS - quiet_ms);
    let tick =
        (e.fuel_used() - f0).saturating_sub(empty * (due_ticks as u64 - 1) / empty_ticks as u64);
    let tick_calls = host_call_delta(&calls_before, e.host_calls());
    assert_eq!(e.stat(stat::SENT) as usize, n);
    for &c in &conns {
        assert_eq!(e.take_redis(c), PING);
    }
    let calls_before = e.host_calls().clone();
    let f0 = e.fuel_used();
    for &c in &conns {
        e.redis_send(c, PONG);
    }
    let pong = e.fuel_used() - f0;
    let pong_calls = host_call_delta(&calls_before, e.host_calls());
    for &c in &conns {
        assert_eq!(e.take_client(c), b"", "a PONG reached the client");
    }

    // Steady state: several intervals of idle, keepalive, PONG; each PING answered right after
    // the tick that sent it, as Redis does.
    const ROUNDS: u64 = 10;
    let sent_before = e.stat(stat::SENT);
    let f0 = e.fuel_used();
    for _ in 0..ROUNDS * INTERVAL_MS / tick_ms {
        e.advance(tick_ms);
        for &c in &conns {
            let sent = e.take_redis(c);
            if !sent.is_empty() {
                assert_eq!(sent, PING);
                e.redis_send(c, PONG);
            }
        }
    }
    let steady = e.fuel_used() - f0;
    let sent = (e.stat(stat::SENT) - sent_before) as usize;
    assert!(sent >= n * ROUNDS as usize, "{sent}");
    assert_eq!(e.stat(stat::ANSWERED), e.stat(stat::SENT));
    println!(
        "BENCH_INSTR {{\"kind\":\"keepalive\",\"connections\":{n},\"tick_period_ms\":{tick_ms},\
\"fuel_empty_tick\":{:.1},\"fuel_tick_per_ping\":{:.1},\"fuel_pong_removal\":{:.1},\"fuel_per_keepalive_steady\":{:.1},\
\"host_calls_tick_per_ping\":{},\"host_calls_pong\":{}}}",
        per(empty, empty_ticks),
        per(tick, n),
        per(pong, n),
        per(steady, sent),
        calls_json(&tick_calls, n),
        calls_json(&pong_calls, n),
    );
}

/// A request that arrives after `probe_after` of silence from Redis: held, PING, PONG, release.
fn measure_probe() {
    const N: usize = 200;
    let mut e = start(r#"{"keepalive_interval": "0s", "probe_after": "100ms"}"#);
    let c = e.connect();
    let get = cmd(&["GET", "k"]);
    let mut fuel = 0u64;
    let calls_before = e.host_calls().clone();
    for _ in 0..N {
        e.advance(200);
        let f0 = e.fuel_used();
        e.client_send(c, &get);
        let probed = e.take_redis(c);
        e.redis_send(c, PONG);
        let released = e.take_redis(c);
        e.redis_send(c, b"$-1\r\n");
        fuel += e.fuel_used() - f0;
        assert_eq!(probed, PING);
        assert_eq!(released, get);
        assert_eq!(e.take_client(c), b"$-1\r\n");
    }
    let calls = host_call_delta(&calls_before, e.host_calls());
    assert_eq!(e.stat("redis_idle_guard.probe.passed") as usize, N);
    println!(
        "BENCH_INSTR {{\"kind\":\"probe\",\"requests\":{N},\"fuel_per_probed_request\":{:.1},\"host_calls\":{}}}",
        per(fuel, N),
        calls_json(&calls, N),
    );
}

#[test]
#[ignore = "a measurement, not a check: run with --ignored --nocapture (tests/bench/bench.py does)"]
fn instructions_per_request_and_per_keepalive() {
    // The data path with the default configuration. The virtual clock stands still, so no tick
    // runs here: these are the data callbacks alone (ticks are measured below).
    for op in [Op::Get, Op::Set] {
        for pipeline in [1, 16] {
            for (size, requests) in [(16, 4_800), (100 * 1024, 480)] {
                let w = Workload {
                    op,
                    pipeline,
                    size,
                    requests,
                };
                measure_requests("defaults", "", &w);
            }
        }
    }
    for n in [1, 1_000, 10_000] {
        measure_keepalive(n);
    }
    measure_probe();
}

/// What one round of the calibration module's spin loop costs in wasm instructions
/// (tests/bench/noop_filter, `spin=N`): `tests/bench/bench.py --calibrate` divides the Envoy CPU
/// the loop adds by this to get the time V8 takes per wasm instruction. The module's path comes
/// from `REDIS_IDLE_GUARD_NOOP_WASM`.
#[test]
#[ignore]
fn calibration_spin_instructions() {
    let Ok(module) = std::env::var("REDIS_IDLE_GUARD_NOOP_WASM") else {
        println!("calibration skipped: REDIS_IDLE_GUARD_NOOP_WASM is not set");
        return;
    };
    let fuel_for = |rounds: u32| {
        let mut e = Envoy::start(Options {
            plugin_config: format!("spin={rounds}"),
            fuel: true,
            module: Some(module.clone()),
            ..Options::default()
        })
        .unwrap_or_else(|err| panic!("{err}"));
        let c = e.connect();
        e.client_send(c, b"x");
        let before = e.fuel_used();
        for _ in 0..10 {
            e.client_send(c, b"x");
        }
        (e.fuel_used() - before) as f64 / 10.0
    };
    let (small, large) = (fuel_for(1_000), fuel_for(11_000));
    println!(
        "BENCH_INSTR {{\"kind\":\"spin\",\"fuel_per_round\":{:.4},\"fuel_per_callback_without_spin\":{:.1}}}",
        (large - small) / 10_000.0,
        small - (large - small) / 10.0
    );
}

/// A time profile of the module: GET P1 16 B round trips without fuel, for `perf record`
/// (the perf map names the module's functions). Runs only when
/// `REDIS_IDLE_GUARD_PROFILE_SECONDS` is set, for that long:
/// `REDIS_IDLE_GUARD_PROFILE_SECONDS=15 perf record -F 2000 <test binary> --ignored --exact profile_get_p1`.
#[test]
#[ignore]
fn profile_get_p1() {
    let Some(seconds) = std::env::var("REDIS_IDLE_GUARD_PROFILE_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        println!("profile skipped: REDIS_IDLE_GUARD_PROFILE_SECONDS is not set");
        return;
    };
    let mut e = Envoy::start(Options::default()).unwrap_or_else(|err| panic!("{err}"));
    host::write_perf_map().unwrap();
    let w = Workload {
        op: Op::Get,
        pipeline: 1,
        size: 16,
        requests: 0,
    };
    let value = "x".repeat(w.size);
    let (request, reply) = (w.request(&value), w.reply(&value));
    let conns: Vec<ConnId> = (0..CLIENTS).map(|_| e.connect()).collect();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let mut n = 0usize;
    println!("PROFILE_READY pid {}", std::process::id());
    while std::time::Instant::now() < until {
        for _ in 0..1000 {
            let c = conns[n % CLIENTS];
            e.client_send(c, &request);
            e.redis_send(c, &reply);
            e.take_redis(c);
            e.take_client(c);
            n += 1;
        }
    }
    println!("PROFILE_DONE {n} requests");
}
