//! `keepalive_interval: "auto"` on the real `.wasm` under the Envoy-faithful host: the module
//! is never told the path's idle cutoff; a small simulated path kills idle connections the way
//! Redis `timeout` (a FIN at the cutoff) or a NAT (a silent drop after it) does, a pool opens a
//! new connection for each one that dies, and the deaths must stop once the cutoff is learned.

use crate::host::{cmd, stat, ConnId, Envoy, PING, PONG};
use redis_idle_guard::session::SPREAD_DIVISOR;

const AUTO: &str = r#"{"keepalive_interval": "auto", "min_keepalive_interval": "500ms",
    "max_keepalive_interval": "10s", "ping_timeout": "1s", "probe_after": "0s"}"#;

fn upstream_stat(cluster: &str, suffix: &str) -> String {
    format!("redis_idle_guard.upstream.upstream_cluster=.={cluster};.;{suffix}")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PathKind {
    /// Redis `timeout`: the server closes a connection idle this long (a FIN).
    RedisTimeout,
    /// A NAT forgets a flow idle this long; later packets vanish (a silent drop).
    SilentDrop,
}

struct Link {
    id: ConnId,
    /// Last packet on the path (either direction).
    last_packet: u64,
    /// The path has forgotten this flow: nothing gets through any more.
    forgotten: bool,
}

/// A pool of `size` connections to `cluster` behind a path with an idle cutoff, and the times
/// at which connections died.
struct Pool {
    cluster: &'static str,
    kind: PathKind,
    cutoff_ms: u64,
    size: usize,
    links: Vec<Link>,
    /// When the pool started, on the host clock.
    start: u64,
    /// When connections died, in ms since the start.
    deaths: Vec<u64>,
}

impl Pool {
    fn new(
        e: &mut Envoy,
        cluster: &'static str,
        kind: PathKind,
        cutoff_ms: u64,
        size: usize,
    ) -> Pool {
        let mut p = Pool {
            cluster,
            kind,
            cutoff_ms,
            size,
            links: Vec::new(),
            start: e.now_ms(),
            deaths: Vec::new(),
        };
        p.refill(e);
        p
    }

    /// The pool opens connections until it has `size`, each used once.
    fn refill(&mut self, e: &mut Envoy) {
        while self.links.len() < self.size {
            let id = e.connect_to(self.cluster, "10.0.0.7:6379");
            e.client_send(id, &cmd(&["GET", "k"]));
            assert_eq!(e.take_redis(id), cmd(&["GET", "k"]));
            e.redis_send(id, b"$-1\r\n");
            assert_eq!(e.take_client(id), b"$-1\r\n");
            self.links.push(Link {
                id,
                last_packet: e.now_ms(),
                forgotten: false,
            });
        }
    }

    /// One step of the path: answer what reached Redis, apply the cutoff, drop what died.
    fn step(&mut self, e: &mut Envoy) {
        let now = e.now_ms();
        for link in &mut self.links {
            if !e.is_open(link.id) {
                continue;
            }
            let idle = now - link.last_packet;
            match self.kind {
                PathKind::RedisTimeout if idle >= self.cutoff_ms => {
                    e.redis_close(link.id);
                    e.client_close(link.id);
                    continue;
                }
                PathKind::SilentDrop if idle >= self.cutoff_ms => link.forgotten = true,
                _ => {}
            }
            let sent = e.take_redis(link.id);
            if sent.is_empty() || link.forgotten {
                continue;
            }
            assert_eq!(
                sent, PING,
                "the pool only idles: whatever reaches Redis is the filter's"
            );
            e.redis_send(link.id, PONG);
            assert_eq!(
                e.take_client(link.id),
                b"",
                "the client never sees the filter's PONG"
            );
            link.last_packet = now;
        }
        // A connection the filter closed (reconnect signal) or Redis closed: the pool notices
        // and opens a new one.
        let before = self.links.len();
        self.links
            .retain(|l| e.is_open(l.id) && !e.client_saw_eof(l.id));
        for _ in self.links.len()..before {
            self.deaths.push(now - self.start);
        }
        self.refill(e);
    }
}

/// Run the pools for `ms` of virtual time in 50 ms steps.
fn run(e: &mut Envoy, pools: &mut [&mut Pool], ms: u64) {
    for _ in 0..ms / 50 {
        e.advance(50);
        for p in pools.iter_mut() {
            p.step(e);
        }
    }
}

#[test]
fn a_redis_timeout_is_learned_from_the_first_deaths_and_then_nobody_dies() {
    let mut e = Envoy::load(AUTO).unwrap();
    let mut pool = Pool::new(&mut e, "redis", PathKind::RedisTimeout, 3_000, 4);
    run(&mut e, &mut [&mut pool], 60_000);
    // The whole pool idles into the 3 s timeout (keepalives start at the 10 s upper bound):
    // Redis's FINs at 3 s say the cutoff is at most 3 s. Deaths that early (long before a
    // keepalive was due) only halve the interval, to 5 s; the new pool idles into the timeout
    // once more, and then the interval goes under the cutoff, with a quarter of margin.
    assert_eq!(pool.deaths.len(), 8, "deaths at {:?}", pool.deaths);
    assert!(pool.deaths.iter().all(|&t| t <= 6_300), "{:?}", pool.deaths);
    let cutoff = e.stat(&upstream_stat("redis", "idle_cutoff_ms"));
    assert!((3_000..=3_050).contains(&cutoff), "learned {cutoff}");
    let interval = e.stat(&upstream_stat("redis", "keepalive_interval_ms"));
    assert_eq!(interval, cutoff - cutoff / 4);
    assert_eq!(e.stat(&upstream_stat("redis", "idle_deaths")), 8);
    assert_eq!(e.stat(&upstream_stat("redis", "idle_events")), 0);
    assert_eq!(e.stat(&upstream_stat("redis", "connections_opened")), 12);
    assert!(
        e.stat(stat::SENT) > 80,
        "keepalives every 2.3 s on 4 connections for ~54 s"
    );
    assert!(
        e.log_contains("upstream redis: connections died after 3")
            && e.log_contains("keepalive interval now 5s"),
        "the learning is logged: {:?}",
        e.logs().iter().map(|l| &l.message).collect::<Vec<_>>()
    );
}

#[test]
fn a_silent_nat_drop_is_learned_in_a_few_rounds_and_then_nobody_dies() {
    let mut e = Envoy::load(AUTO).unwrap();
    let mut pool = Pool::new(&mut e, "redis", PathKind::SilentDrop, 2_500, 3);
    run(&mut e, &mut [&mut pool], 90_000);
    // A silent drop is only noticed when a PING goes unanswered, so each round learns "at most
    // the spell it died after" (the interval less each connection's spread, up to a fifth):
    // 10 s, 5 s, then 2.5 s less the spread is inside the cutoff.
    let rounds: std::collections::BTreeSet<u64> = pool.deaths.iter().map(|t| t / 1_000).collect();
    assert_eq!(pool.deaths.len(), 6, "2 rounds of 3: {:?}", pool.deaths);
    assert!(rounds.len() <= 4, "{rounds:?}");
    let last_death = *pool.deaths.last().unwrap();
    assert!(
        last_death < 30_000,
        "no death in the last minute: {:?}",
        pool.deaths
    );
    let interval = e.stat(&upstream_stat("redis", "keepalive_interval_ms"));
    assert!(
        interval < 2_500,
        "keepalive interval {interval} ms inside the 2.5 s cutoff"
    );
    assert_eq!(
        e.stat(stat::RECONNECT),
        6,
        "every death was a reconnect signal while idle"
    );
}

#[test]
fn each_upstream_learns_its_own_cutoff() {
    let mut e = Envoy::load(AUTO).unwrap();
    let mut nat = Pool::new(&mut e, "behind-nat", PathKind::SilentDrop, 2_500, 2);
    let mut direct = Pool::new(&mut e, "direct", PathKind::RedisTimeout, 3_600_000, 2);
    run(&mut e, &mut [&mut nat, &mut direct], 60_000);
    assert!(!nat.deaths.is_empty());
    assert!(direct.deaths.is_empty());
    assert!(e.stat(&upstream_stat("behind-nat", "keepalive_interval_ms")) < 2_500);
    assert_eq!(
        e.stat(&upstream_stat("direct", "keepalive_interval_ms")),
        10_000
    );
    assert_eq!(e.stat(&upstream_stat("direct", "idle_cutoff_ms")), 0);
    // The spells the direct path survived are recorded (one per keepalive, each up to a fifth
    // of the 10 s interval early: its connection's spread).
    let spells = e.histogram(&upstream_stat("direct", "idle_spell_ms"));
    assert!(
        spells.len() >= 10
            && spells
                .iter()
                .all(|&s| s >= 10_000 - 10_000 / SPREAD_DIVISOR),
        "{spells:?}"
    );
}

#[test]
fn a_fixed_interval_learns_nothing_but_still_reports_per_upstream() {
    let mut e =
        Envoy::load(r#"{"keepalive_interval": "10s", "ping_timeout": "1s", "probe_after": "0s"}"#)
            .unwrap();
    let mut pool = Pool::new(&mut e, "redis", PathKind::RedisTimeout, 3_000, 2);
    run(&mut e, &mut [&mut pool], 30_000);
    // Every connection idles into the timeout, again and again: 2 per 3 s.
    assert!(pool.deaths.len() >= 18, "{:?}", pool.deaths);
    assert_eq!(
        e.stat(&upstream_stat("redis", "keepalive_interval_ms")),
        10_000
    );
    assert_eq!(e.stat(&upstream_stat("redis", "idle_cutoff_ms")), 0);
    assert_eq!(
        e.stat(&upstream_stat("redis", "idle_deaths")),
        pool.deaths.len() as i64
    );
    let died_after = e.histogram(&upstream_stat("redis", "death_idle_ms"));
    assert!(
        died_after.iter().all(|&d| (3_000..3_100).contains(&d)),
        "{died_after:?}"
    );
}

#[test]
fn what_one_worker_learns_is_shared_with_the_others() {
    // This worker learns, and publishes in proxy-wasm shared data (one store for all workers).
    let mut e = Envoy::load(AUTO).unwrap();
    let mut pool = Pool::new(&mut e, "redis", PathKind::RedisTimeout, 3_000, 2);
    run(&mut e, &mut [&mut pool], 10_000);
    let shared = e
        .shared_data("redis_idle_guard.idle_cutoff.redis")
        .map(|v| String::from_utf8(v).unwrap());
    let learned = e.stat(&upstream_stat("redis", "idle_cutoff_ms"));
    let interval = e.stat(&upstream_stat("redis", "keepalive_interval_ms"));
    assert_eq!(shared, Some(format!("{learned}:{interval}")));

    // Another worker (a fresh VM) takes it within a second, before any of its own connections
    // idles into the cutoff.
    let mut other = Envoy::load(AUTO).unwrap();
    let mut pool = Pool::new(&mut other, "redis", PathKind::RedisTimeout, 3_000, 3);
    other.set_shared_data(
        "redis_idle_guard.idle_cutoff.redis",
        format!("{learned}:{interval}").as_bytes(),
    );
    run(&mut other, &mut [&mut pool], 30_000);
    assert!(pool.deaths.is_empty(), "died at {:?}", pool.deaths);
    assert_eq!(
        other.stat(&upstream_stat("redis", "keepalive_interval_ms")),
        interval
    );
    assert!(other.log_contains("another worker learned that the path's idle cutoff is at most"));

    // A tighter estimate published elsewhere is not overwritten by a looser local one; garbage
    // in the store is ignored.
    let mut third = Envoy::load(AUTO).unwrap();
    third.set_shared_data("redis_idle_guard.idle_cutoff.redis", b"1000:500");
    let mut pool = Pool::new(&mut third, "redis", PathKind::RedisTimeout, 3_000, 1);
    run(&mut third, &mut [&mut pool], 5_000);
    assert_eq!(
        third
            .shared_data("redis_idle_guard.idle_cutoff.redis")
            .unwrap(),
        b"1000:500"
    );
    assert_eq!(
        third.stat(&upstream_stat("redis", "keepalive_interval_ms")),
        500
    );
    third.set_shared_data("redis_idle_guard.idle_cutoff.redis", b"not a number");
    run(&mut third, &mut [&mut pool], 3_000);
    assert_eq!(
        third.stat(&upstream_stat("redis", "keepalive_interval_ms")),
        500
    );
}
