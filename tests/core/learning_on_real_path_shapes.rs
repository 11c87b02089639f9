//! Learning the idle cutoff against the shapes of real paths and events, with the core's worker
//! under a fake host and clock (tests/support/harness.rs): a cutoff is learned with few deaths
//! and then none; an event teaches nothing; a wrong estimate recovers.

use crate::support::harness::{Harness, Path, Store};

/// Bounds 1 s to 8 s, as the e2e learning tests; probes off (the keepalives do the learning).
const AUTO: &str = r#"{"keepalive_interval":"auto","min_keepalive_interval":"1s","max_keepalive_interval":"8s","ping_timeout":"1s","probe_after":"0s"}"#;

fn pool(path: Path, connections: u32) -> Harness {
    let mut h = Harness::new(AUTO, &Store::default());
    h.path = path;
    h.pool = true;
    for id in 1..=connections {
        h.open_used(id);
    }
    h
}

fn deaths_between(h: &Harness, from: u64, to: u64) -> usize {
    h.deaths
        .iter()
        .filter(|(t, _)| (from..to).contains(t))
        .count()
}

/// A real cutoff: learned after a few deaths, then none, but for the re-test ten maximum
/// intervals (80 s) after the estimate was last confirmed, which costs one connection (its
/// canary idles past the cutoff), and the interval stays.
fn learns(path: Path, connections: u32, cutoff: u64) -> Harness {
    let mut h = pool(path, connections);
    h.run_until(200_000);
    assert!(h.interval() < cutoff as i64, "interval {}", h.interval());
    let learning = deaths_between(&h, 0, 30_000);
    assert!(
        (1..=3 * connections as usize).contains(&learning),
        "{learning} deaths while learning: {:?}",
        h.deaths
    );
    assert_eq!(deaths_between(&h, 30_000, 80_000), 0, "{:?}", h.deaths);
    let retests = deaths_between(&h, 80_000, 200_000);
    assert!(retests <= 1, "{:?}", h.deaths);
    assert_eq!(h.upstream("idle_events"), 0);
    h
}

#[test]
fn a_nat_cutoff_is_learned_and_then_only_a_retest_costs_a_connection() {
    learns(Path::Nat(3_000), 3, 3_000);
}

#[test]
fn redis_timeout_is_learned() {
    learns(Path::Closes(2_500), 3, 2_500);
}

#[test]
fn envoy_idle_timeout_is_learned() {
    learns(Path::EnvoyCloses(4_000), 2, 4_000);
}

#[test]
fn a_restart_with_staggered_idle_ages_teaches_nothing() {
    let mut h = Harness::new(AUTO, &Store::default());
    h.path = Path::Answering;
    h.pool = true;
    // Twenty connections last used one after the other: idle 0.3 s to 7.9 s when Redis restarts.
    for id in 1..=20u32 {
        h.run_until(u64::from(id) * 400);
        h.open_used(id);
    }
    h.run_until(8_100);
    h.restart();
    h.run_until(30_000);
    assert_eq!(h.upstream("idle_events"), 20);
    assert_eq!(h.interval(), 8_000);
    assert_eq!(h.upstream("idle_cutoff_ms"), 0);
}

#[test]
fn a_restart_seen_by_one_connection_halves_at_most_and_is_undone() {
    let mut h = pool(Path::Answering, 1);
    h.run_until(3_000);
    h.restart();
    h.run_until(4_500);
    assert_eq!(h.interval(), 4_000, "one odd death halves, no more");
    // The interval's next spells survive longer than the estimate (3 s): it is refuted.
    h.run_until(20_000);
    assert_eq!(h.interval(), 8_000);
}

#[test]
fn a_failover_closing_busy_and_idle_connections_teaches_nothing() {
    let mut h = pool(Path::Answering, 4);
    h.run_until(5_000);
    // Connection 1 is waiting for a reply when Redis goes; the others are idle.
    h.client(1, &crate::support::cmd(&["BLPOP", "q", "0"]));
    h.restart();
    h.run_until(20_000);
    assert_eq!(h.interval(), 8_000);
    assert_eq!(h.upstream("idle_events"), 4);
}

#[test]
fn a_black_hole_steps_down_and_recovery_brings_it_back() {
    let mut h = pool(Path::Answering, 4);
    h.run_until(20_000);
    // Ten seconds in which nothing answers (no new connection gets through either).
    h.pool = false;
    h.path = Path::BlackHole;
    h.run_until(30_000);
    h.path = Path::Answering;
    h.pool = true;
    for id in 100..104 {
        h.open_used(id);
    }
    // The deaths are judged at the next poll (the pool's new connections carry it).
    h.run_until(31_000);
    assert!(
        h.interval() < 8_000,
        "a black hole with no busy traffic looks like a cutoff"
    );
    // The estimate is re-tested ten maximum intervals (80 s) after it was last set; a canary
    // that survives twice the estimate refutes it.
    let mut recovered = None;
    for t in (31_000..200_000).step_by(1_000) {
        h.run_until(t);
        if h.interval() == 8_000 {
            recovered = Some(t);
            break;
        }
    }
    let t = recovered.expect("the interval never came back");
    assert!(t <= 30_000 + 80_000 + 20_000, "recovered at {t} ms");
    assert_eq!(deaths_between(&h, 30_000, t + 1), 0, "{:?}", h.deaths);
}

#[test]
fn a_restart_after_learning_keeps_what_was_learned() {
    let mut h = pool(Path::Nat(3_000), 4);
    h.run_until(60_000);
    let learned = h.interval();
    assert!(learned < 3_000);
    h.restart();
    h.run_until(90_000);
    assert_eq!(h.interval(), learned);
    assert!(h.upstream("idle_events") >= 4);
    assert_eq!(deaths_between(&h, 60_001, 90_000), 0, "{:?}", h.deaths);
}
