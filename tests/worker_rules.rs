//! The core's worker with a fake host and a fake clock: when connections are woken, what their
//! events do to the stats, how an upstream's learned cutoff reaches every connection to it and
//! every worker, and how the upstream is identified. Both builds' adapters only translate these
//! calls, so this is where those rules are pinned.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod support;

use redis_idle_guard::host::Cluster;
use redis_idle_guard::session::{CloseReason, PING};
use redis_idle_guard::shared_cutoff::POLL_MS;
use redis_idle_guard::worker::Wake;
use support::cmd;
use support::harness::{Harness, Store, PONG};

fn get() -> Vec<u8> {
    cmd(&["GET", "k"])
}

#[test]
fn the_data_path_arms_nothing_and_a_keepalive_is_woken_on_time() {
    let store = Store::default();
    let mut h = Harness::new(
        r#"{"keepalive_interval":"1s","ping_timeout":"500ms"}"#,
        &store,
    );
    h.open(1);
    assert_eq!(h.host.armed.get(&1), Some(&1_000));
    let arms = h.host.arms;
    for t in [100, 300, 600] {
        h.now = t;
        h.client(1, &get());
        h.server(1, b"$1\r\nv\r\n");
    }
    assert_eq!(h.host.arms, arms, "a request and its reply armed the timer");
    // The armed wake finds the connection busy until 600: it re-arms for 1600, where it pings.
    h.run_until(1_599);
    assert_eq!(h.pings_to(1), 0);
    h.run_until(1_600);
    assert_eq!(h.pings_to(1), 1);
    // The PING's answer is owed within ping_timeout: that deadline is armed.
    assert_eq!(h.host.armed.get(&1), Some(&2_100));
    h.now = 1_601;
    h.server(1, PONG);
    assert_eq!(
        h.to_client[&1].len(),
        3 * 7,
        "the filter's reply reached the client"
    );
    assert_eq!(
        h.host.stats.get("redis_idle_guard.keepalive.answered"),
        Some(&1)
    );
    h.run_until(2_601);
    assert_eq!(h.pings_to(1), 2);
}

#[test]
fn an_unanswered_ping_closes_the_idle_connection_and_counts_a_death() {
    let store = Store::default();
    let mut h = Harness::new(
        r#"{"keepalive_interval":"1s","ping_timeout":"500ms"}"#,
        &store,
    );
    h.open(1);
    h.client(1, &get());
    h.server(1, b"$1\r\nv\r\n");
    h.run_until(1_499);
    assert!(h.closed.is_empty());
    h.run_until(1_500);
    assert_eq!(h.closed, vec![(1, CloseReason::PingTimeout)]);
    assert_eq!(h.upstream("idle_deaths"), 1);
    assert_eq!(h.upstream("reconnect_signals"), 1);
    assert_eq!(
        h.host.stats.get("redis_idle_guard.keepalive.failed"),
        Some(&1)
    );
}

const AUTO: &str = r#"{"keepalive_interval":"auto","min_keepalive_interval":"1s","max_keepalive_interval":"8s","ping_timeout":"1s","probe_after":"0s"}"#;

#[test]
fn a_death_puts_every_connection_of_the_upstream_on_the_learned_interval() {
    let store = Store::default();
    let mut h = Harness::new(AUTO, &store);
    for id in [1, 2] {
        h.open(id);
        h.client(id, &get());
        h.server(id, b"$1\r\nv\r\n");
    }
    assert_eq!(h.upstream("keepalive_interval_ms"), 8_000);
    // Connection 2 is used again at 7.5 s; connection 1 pings at 8 s and is never answered
    // (a NAT forgot the flow): it dies at 9 s after 8 s of silence.
    h.run_until(7_500);
    h.client(2, &get());
    h.server(2, b"$1\r\nv\r\n");
    h.run_until(9_000);
    assert_eq!(h.closed, vec![(1, CloseReason::PingTimeout)]);
    // Judged when its burst is over (a second later, at the next poll): alone, so evidence.
    assert_eq!(h.upstream("keepalive_interval_ms"), 8_000);
    h.run_until(10_000);
    assert_eq!(h.upstream("idle_cutoff_ms"), 8_000);
    assert_eq!(h.upstream("keepalive_interval_ms"), 4_000);
    assert_eq!(
        store
            .borrow()
            .get("redis_idle_guard.idle_cutoff.redis")
            .map(|v| v.0.clone()),
        Some(b"8000:4000".to_vec()),
        "published for the other workers"
    );
    // Connection 2 follows at once: its next PING comes 4 s after its last use, not 8 s.
    h.run_until(11_499);
    assert_eq!(h.pings_to(2), 0);
    h.run_until(11_500);
    assert_eq!(h.pings_to(2), 1);
    // A new connection starts on the learned interval.
    h.open(3);
    h.client(3, &get());
    h.server(3, b"$1\r\nv\r\n");
    h.run_until(15_500);
    assert_eq!(h.pings_to(3), 1);
}

#[test]
fn another_worker_adopts_the_cutoff_within_a_poll() {
    let store = Store::default();
    let mut learner = Harness::new(AUTO, &store);
    let mut other = Harness::new(AUTO, &store);
    for h in [&mut learner, &mut other] {
        h.open(1);
        h.client(1, &get());
        h.server(1, b"$1\r\nv\r\n");
    }
    // The other worker's connection is busy (no death of its own); the learner's dies at 9 s.
    other.run_until(7_900);
    other.client(1, &get());
    other.server(1, b"$1\r\nv\r\n");
    other.run_until(10_000);
    learner.run_until(9_500);
    assert_eq!(learner.closed.len(), 1, "the learner's connection died");
    // Its pool reconnects; the burst is judged at that worker's next poll.
    learner.open_used(2);
    learner.run_until(10_000);
    assert_eq!(learner.upstream("keepalive_interval_ms"), 4_000);
    assert_eq!(other.upstream("keepalive_interval_ms"), 8_000);
    // The other hears of the cutoff at its next poll and keeps alive at 4 s from then on.
    other.run_until(10_000 + POLL_MS);
    assert_eq!(other.upstream("keepalive_interval_ms"), 4_000);
    other.run_until(11_899);
    assert_eq!(other.pings_to(1), 0);
    other.run_until(11_900);
    assert_eq!(other.pings_to(1), 1);
    assert!(other.closed.is_empty());
}

#[test]
fn the_upstream_is_asked_for_on_four_callbacks_at_most() {
    let store = Store::default();
    let mut h = Harness::new("{}", &store);
    h.cluster = Cluster::NotYet;
    h.open(1);
    for _ in 0..3 {
        h.client(1, &get());
        h.server(1, b"$1\r\nv\r\n");
    }
    assert_eq!(h.asked, 4);
    h.cluster = Cluster::Known("redis".into());
    h.client(1, &get());
    assert_eq!(h.asked, 4);
    assert_eq!(h.upstream("connections_opened"), 0);

    // Known on the first ask: counted once, never asked again.
    h.asked = 0;
    h.open(2);
    h.client(2, &get());
    h.server(2, b"$1\r\nv\r\n");
    assert_eq!((h.asked, h.upstream("connections_opened")), (1, 1));
}

#[test]
fn a_probed_command_that_cannot_be_released_closes_without_sending_it() {
    let store = Store::default();
    let mut h = Harness::new(
        r#"{"keepalive_interval":"0s","probe_after":"1s","ping_timeout":"1s"}"#,
        &store,
    );
    h.open(1);
    h.client(1, &get());
    h.server(1, b"$1\r\nv\r\n");
    h.now = 5_000;
    h.client(1, &cmd(&["INCR", "n"]));
    assert!(
        h.to_redis[&1].ends_with(PING),
        "the probe goes first, the command is held"
    );
    h.now = 5_001;
    let (release, close) = h.server(1, PONG);
    assert_eq!(release, Some(cmd(&["INCR", "n"])));
    assert_eq!(close, None);
    assert_eq!(
        h.worker.release_failed(&mut h.host, 1),
        Some(CloseReason::ProbeFailed)
    );
    assert_eq!(h.host.stats.get("redis_idle_guard.probe.failed"), Some(&1));
}

#[test]
fn removing_a_connection_forgets_it() {
    let store = Store::default();
    let mut h = Harness::new(AUTO, &store);
    h.open(1);
    h.open(2);
    assert_eq!(h.host.stats.get("redis_idle_guard.connections"), Some(&2));
    h.worker.remove(&mut h.host, 1);
    assert!(!h.worker.is_tracked(1));
    assert_eq!(h.host.stats.get("redis_idle_guard.connections"), Some(&1));
    // Waking a connection that is gone does nothing.
    assert_eq!(h.worker.wake(&mut h.host, 1, 100_000), Wake::Nothing);
}
