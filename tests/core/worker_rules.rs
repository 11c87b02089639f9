//! The core's worker with a fake host and a fake clock: when connections are woken, what their
//! events do to the stats, how an upstream's learned cutoff reaches every connection to it and
//! every worker, and how the upstream is identified. Both builds' adapters only translate these
//! calls, so this is where those rules are pinned.

use crate::support::cmd;
use crate::support::harness::{Harness, Path, Store, PONG};
use redis_idle_guard::host::Cluster;
use redis_idle_guard::session::{spread_early, CloseReason, PING};
use redis_idle_guard::shared_cutoff::POLL_MS;
use redis_idle_guard::worker::{spread_of, Wake};

fn get() -> Vec<u8> {
    cmd(&["GET", "k"])
}

/// The quiet time after which connection `id`'s keepalive is due: the interval, less its spread.
fn due(id: u32, interval: u64) -> u64 {
    interval - spread_early(interval, spread_of(id))
}

#[test]
fn the_data_path_arms_nothing_and_a_keepalive_is_woken_on_time() {
    let store = Store::default();
    let mut h = Harness::new(
        r#"{"keepalive_interval":"1s","ping_timeout":"500ms"}"#,
        &store,
    );
    h.open(1);
    let ka = due(1, 1_000);
    assert!((800..1_000).contains(&ka), "{ka}");
    assert_eq!(h.host.armed.get(&1), Some(&ka));
    let arms = h.host.arms;
    for t in [100, 300, 600] {
        h.now = t;
        h.client(1, &get());
        h.server(1, b"$1\r\nv\r\n");
    }
    assert_eq!(h.host.arms, arms, "a request and its reply armed the timer");
    // The armed wake finds the connection busy until 600: it re-arms, and pings `ka` later.
    h.run_until(600 + ka - 1);
    assert_eq!(h.pings_to(1), 0);
    h.run_until(600 + ka);
    assert_eq!(h.pings_to(1), 1);
    // The PING's answer is owed within ping_timeout: that deadline is armed.
    assert_eq!(h.host.armed.get(&1), Some(&(600 + ka + 500)));
    h.now = 600 + ka + 1;
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
    h.run_until(600 + ka + 1 + ka);
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
    h.run_until(due(1, 1_000) + 499);
    assert!(h.closed.is_empty());
    h.run_until(due(1, 1_000) + 500);
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
    // Connection 2 is used again at 7.5 s; connection 1 pings at its share of 8 s (about 7 s)
    // and is never answered (a NAT forgot the flow): it dies a second later, after `spell`.
    let spell = due(1, 8_000);
    assert!(spell < 7_500 && due(2, 8_000) > 7_500, "{spell}");
    h.run_until(7_500);
    h.client(2, &get());
    h.server(2, b"$1\r\nv\r\n");
    h.run_until(spell + 1_000);
    assert_eq!(h.closed, vec![(1, CloseReason::PingTimeout)]);
    // Judged when its burst is over (a second later, at the next poll): alone, so evidence.
    assert_eq!(h.upstream("keepalive_interval_ms"), 8_000);
    h.run_until(10_000);
    // Towards half the estimate, halving the interval at most.
    let learned = (spell / 2).max(8_000 / 2);
    assert_eq!(h.upstream("idle_cutoff_ms"), spell as i64);
    assert_eq!(h.upstream("keepalive_interval_ms"), learned as i64);
    assert_eq!(
        store
            .borrow()
            .get("redis_idle_guard.idle_cutoff.redis")
            .map(|v| v.0.clone()),
        Some(format!("{spell}:{learned}").into_bytes()),
        "published for the other workers"
    );
    // Connection 2 follows at once: its next PING comes on the learned interval after its last
    // use, not 8 s.
    h.run_until(7_500 + due(2, learned) - 1);
    assert_eq!(h.pings_to(2), 0);
    h.run_until(7_500 + due(2, learned));
    assert_eq!(h.pings_to(2), 1);
    // A new connection starts on the learned interval.
    let opened = h.now;
    h.open(3);
    h.client(3, &get());
    h.server(3, b"$1\r\nv\r\n");
    h.run_until(opened + due(3, learned));
    assert_eq!(h.pings_to(3), 1);
}

#[test]
fn another_worker_adopts_the_cutoff_within_a_poll() {
    let store = Store::default();
    let mut learner = Harness::new(AUTO, &store);
    let mut other = Harness::new(AUTO, &store);
    // The learner's connection 1 and the other worker's connection 2.
    for (h, id) in [(&mut learner, 1), (&mut other, 2)] {
        h.open(id);
        h.client(id, &get());
        h.server(id, b"$1\r\nv\r\n");
    }
    // The other worker's connection is busy (no death of its own) before its keepalive is
    // due; the learner's pings at its share of 8 s and dies a second later.
    let busy_at = 7_500;
    assert!(due(2, 8_000) > busy_at && due(1, 8_000) + 1_000 < 9_500);
    other.run_until(busy_at);
    other.client(2, &get());
    other.server(2, b"$1\r\nv\r\n");
    other.run_until(10_000);
    learner.run_until(9_500);
    assert_eq!(learner.closed.len(), 1, "the learner's connection died");
    // Its pool reconnects; the burst is judged at that worker's next poll.
    learner.open_used(3);
    learner.run_until(10_000);
    assert_eq!(learner.upstream("keepalive_interval_ms"), 4_000);
    assert_eq!(other.upstream("keepalive_interval_ms"), 8_000);
    // The other hears of the cutoff at its next poll and keeps alive at 4 s from then on.
    other.run_until(10_000 + POLL_MS);
    assert_eq!(other.upstream("keepalive_interval_ms"), 4_000);
    let next = busy_at + due(2, 4_000);
    assert!(next > 10_000 + POLL_MS);
    other.run_until(next - 1);
    assert_eq!(other.pings_to(2), 0);
    other.run_until(next);
    assert_eq!(other.pings_to(2), 1);
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

/// The largest share of `times` (ms) in any window of `window` ms.
fn busiest_share(times: &[u64], window: u64) -> f64 {
    let mut ts = times.to_vec();
    ts.sort_unstable();
    let mut best = 0;
    let mut j = 0;
    for (i, &t) in ts.iter().enumerate() {
        while ts[j] + window <= t {
            j += 1;
        }
        best = best.max(i + 1 - j);
    }
    best as f64 / ts.len().max(1) as f64
}

#[test]
fn connections_that_went_quiet_together_are_pinged_and_closed_apart() {
    // The defaults: a 15 s keepalive, 5 s ping_timeout.
    let store = Store::default();
    let mut h = Harness::new("{}", &store);
    h.path = Path::Answering;
    // A pool's 1,000 connections go quiet at the same instant (a burst of traffic that ended).
    let ids: Vec<u32> = (1..=1_000).collect();
    for &id in &ids {
        h.open_used(id);
    }
    // Their first keepalives spread over 12..15 s (up to a fifth early, never late).
    let mut first = Vec::new();
    for t in (0..=15_000).step_by(100) {
        h.run_until(t);
        let pinged = ids.iter().filter(|&&id| h.pings_to(id) == 1).count();
        first.extend(std::iter::repeat_n(t, pinged - first.len()));
    }
    assert_eq!(
        first.len(),
        ids.len(),
        "a keepalive later than the interval"
    );
    assert!(first.iter().all(|&t| t >= 12_000), "{first:?}");
    assert!(
        busiest_share(&first, 100) <= 0.05,
        "{}",
        busiest_share(&first, 100)
    );
    // Redis stalls: the next keepalives go unanswered, and each connection is closed
    // ping_timeout after its own, over 6 s (each has drifted by its spread twice).
    h.path = Path::BlackHole;
    h.run_until(15_000 + 15_000 + 5_000);
    let closes: Vec<u64> = h.deaths.iter().map(|&(t, _)| t).collect();
    assert_eq!(closes.len(), ids.len());
    let (lo, hi) = (closes.iter().min().unwrap(), closes.iter().max().unwrap());
    assert!(hi - lo >= 5_000, "closes from {lo} to {hi}");
    let share = busiest_share(&closes, 100);
    assert!(
        share <= 0.05,
        "the busiest 100 ms held {:.0}% of the closes",
        share * 100.0
    );
}
