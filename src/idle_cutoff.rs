//! Learning a path's idle cutoff: how long a connection to one upstream may stay silent before
//! something on the path (a NAT, a load balancer, conntrack, Redis `timeout`, Envoy's
//! `idle_timeout`) kills it, told apart from events that kill connections whatever their idle.
//!
//! # The rule
//! - An idle cutoff kills each connection when its own idle age reaches the cutoff. An event (a
//!   Redis restart or failover, a reset storm, a black hole, Envoy draining) kills connections
//!   at one moment whatever their idle ages, busy ones included.
//! - So deaths are judged in bursts: the deaths of one upstream within [`BURST_MS`] of each
//!   other. A burst is an **event**, and teaches nothing, if a connection died in it while busy
//!   (a reply was pending) or young (idle less than `min_keepalive_interval`), or if its idle
//!   ages differ by more than a factor of [`SPREAD`]. Otherwise it is **evidence**: the cutoff is
//!   at most its shortest idle age.
//! - Evidence below the estimate lowers it, and the keepalive interval steps towards half of it,
//!   **at most halving per piece of evidence**: one death of an odd shape (a restart seen by a
//!   single connection) cannot take the interval to the minimum.
//! - A survived idle spell longer than the estimate (by an eighth: a spell of about the cutoff
//!   may die or survive) proves it wrong (the path changed): the estimate is dropped, and the
//!   interval goes back to the maximum.
//! - **Recovery**: an estimate not confirmed for a while is re-tested: one connection (a canary)
//!   idles up to twice the estimate, with its next command probed. Surviving that refutes the
//!   estimate; dying confirms it, and the next test waits twice as long (see
//!   [`IdleCutoff::retest_due`]).
//!
//! # Limits
//! - A black hole with no busy traffic through it looks like a cutoff at the interval in use:
//!   the interval steps down while it lasts, and recovery brings it back.
//! - Bursts are seen per worker: a worker that lost a single connection in an event cannot tell,
//!   and halves its interval once (shared with the other workers); refutation or recovery undo it.

use crate::config::LearnBounds;
use crate::duration::Millis;

/// Deaths closer in time than this belong to one burst.
pub const BURST_MS: Millis = 1_000;
/// A burst whose idle ages differ by more than this factor is an event.
const SPREAD: Millis = 2;
/// A burst holds at most this many deaths (the rest are counted, not kept).
const MAX_BURST: usize = 64;
/// The first re-test of an estimate waits this many maximum intervals; each confirmation
/// doubles the wait, up to [`MAX_RETEST_MS`].
const RETEST_INTERVALS: Millis = 10;
const MAX_RETEST_MS: Millis = 3_600_000;

/// One connection's death, as a burst keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Death {
    /// Idle age at death (0 for a busy one).
    idle_ms: Millis,
    busy: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdleCutoff {
    /// The cutoff is at most this (set by evidence).
    estimate: Option<Millis>,
    /// The keepalive interval in use (None: the maximum).
    interval: Option<Millis>,
    /// Longest idle spell proven survivable since the estimate was set.
    survived: Millis,
    /// The burst being gathered: when it began, and its deaths.
    burst_at: Millis,
    burst: Vec<Death>,
    burst_extra: u64,
    /// When the estimate was last set or confirmed, and how long until it is re-tested.
    confirmed_at: Millis,
    retest_wait: Millis,
    /// A re-test is under way (its canary idles).
    testing: bool,
    /// Bursts accepted as evidence.
    pub evidence: u64,
    /// Deaths discarded as parts of events.
    pub events: u64,
}

/// What an observation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Nothing changed.
    Same,
    /// The estimate or the interval changed.
    Changed,
    /// A burst was judged an event and discarded (its number of deaths).
    Event(u64),
}

impl IdleCutoff {
    /// The learned cutoff, if any.
    pub fn estimate(&self) -> Option<Millis> {
        self.estimate
    }

    /// The keepalive interval to use for this upstream.
    pub fn keepalive_interval(&self, bounds: LearnBounds) -> Millis {
        self.interval
            .unwrap_or(bounds.max)
            .clamp(bounds.min, bounds.max)
    }

    /// A connection died at `now` after `idle_ms` of silence (`busy`: with a reply pending).
    /// Judged with the rest of its burst, by [`IdleCutoff::settle`] or the next death.
    pub fn died(
        &mut self,
        now: Millis,
        idle_ms: Millis,
        busy: bool,
        bounds: LearnBounds,
    ) -> Learned {
        let judged = if !self.burst.is_empty() && now >= self.burst_at + BURST_MS {
            self.judge(now, bounds)
        } else {
            Learned::Same
        };
        if self.burst.is_empty() {
            self.burst_at = now;
        }
        if self.burst.len() < MAX_BURST {
            self.burst.push(Death { idle_ms, busy });
        } else {
            self.burst_extra += 1;
        }
        judged
    }

    /// Judge the burst if it is complete ([`BURST_MS`] old).
    pub fn settle(&mut self, now: Millis, bounds: LearnBounds) -> Learned {
        if !self.burst.is_empty() && now >= self.burst_at + BURST_MS {
            self.judge(now, bounds)
        } else {
            Learned::Same
        }
    }

    /// Whether a burst waits to be judged.
    pub fn pending(&self) -> bool {
        !self.burst.is_empty()
    }

    fn judge(&mut self, now: Millis, bounds: LearnBounds) -> Learned {
        let burst = std::mem::take(&mut self.burst);
        let extra = std::mem::take(&mut self.burst_extra);
        let shortest = burst.iter().map(|d| d.idle_ms).min().unwrap_or(0);
        let longest = burst.iter().map(|d| d.idle_ms).max().unwrap_or(0);
        let event = burst.iter().any(|d| d.busy || d.idle_ms < bounds.min)
            || extra > 0
            || longest > shortest.saturating_mul(SPREAD);
        if event {
            let n = burst.len() as u64 + extra;
            self.events += n;
            return Learned::Event(n);
        }
        self.evidence += 1;
        self.evidence_at(now, shortest, bounds)
    }

    /// The cutoff is at most `d`.
    fn evidence_at(&mut self, now: Millis, d: Millis, bounds: LearnBounds) -> Learned {
        if d <= self.survived {
            // Shorter than a spell proven survivable: the path changed. Start over from here.
            self.survived = 0;
        }
        self.confirmed_at = now;
        let estimate = self.estimate.map_or(d, |e| e.min(d));
        if self.estimate != Some(estimate) {
            self.retest_wait = bounds.max * RETEST_INTERVALS;
        } else if self.testing {
            // A re-test confirmed the estimate: test less often.
            self.retest_wait = (self.retest_wait * 2).min(MAX_RETEST_MS);
        }
        self.testing = false;
        self.estimate = Some(estimate);
        let current = self.keepalive_interval(bounds);
        let target = estimate / 2;
        // Towards half the estimate, at most halving at once. A death where a keepalive was due
        // puts the interval below the estimate (with a quarter of margin: a spell of exactly
        // the cutoff may die or not); one long before (a FIN at a short age) only halves it,
        // so that the next spells test the estimate.
        let early = d < current / 2;
        let step = if early {
            current / 2
        } else {
            (current / 2).min(estimate - estimate / 4)
        };
        let next = target.max(step).clamp(bounds.min, bounds.max);
        if next >= current {
            return Learned::Same;
        }
        self.interval = Some(next);
        Learned::Changed
    }

    /// The first bytes sent after `idle_ms` of silence were answered. A spell longer than the
    /// estimate by an eighth refutes it (a spell of about the cutoff may die or survive).
    pub fn survived(&mut self, idle_ms: Millis) -> Learned {
        self.survived = self.survived.max(idle_ms);
        match self.estimate {
            Some(e) if idle_ms >= e + e / 8 => {
                self.forget();
                Learned::Changed
            }
            _ => Learned::Same,
        }
    }

    fn forget(&mut self) {
        self.estimate = None;
        self.interval = None;
        self.retest_wait = 0;
        self.testing = false;
    }

    /// Whether the estimate is due for a re-test at `now`: one connection should idle up to
    /// [`IdleCutoff::canary_spell`] (the caller starts the test and calls
    /// [`IdleCutoff::retest_started`]).
    pub fn retest_due(&self, now: Millis) -> bool {
        self.estimate.is_some()
            && self.retest_wait > 0
            && now >= self.confirmed_at + self.retest_wait
    }

    /// How long the canary of a re-test idles: past the estimate, up to twice it.
    pub fn canary_spell(&self, bounds: LearnBounds) -> Option<Millis> {
        let e = self.estimate?;
        Some((e * 2).min(bounds.max.max(e + e / 2)))
    }

    /// A re-test began at `now`: the next one waits at least as long again, whatever its
    /// outcome (a canary that never finishes its spell does not start a test per wake).
    pub fn retest_started(&mut self, now: Millis) {
        self.confirmed_at = now;
        self.testing = true;
    }

    /// Take the estimate and interval another worker learned (shared between Envoy's workers):
    /// the interval follows the lower of the two, the estimate likewise.
    pub fn adopt(
        &mut self,
        shared: Option<(Millis, Millis)>,
        bounds: LearnBounds,
        now: Millis,
    ) -> Learned {
        let Some((estimate, interval)) = shared else {
            if self.estimate.is_some() {
                self.forget();
                return Learned::Changed;
            }
            return Learned::Same;
        };
        let mine = self.keepalive_interval(bounds);
        let interval = interval.clamp(bounds.min, bounds.max);
        if self.estimate.is_some_and(|e| e <= estimate) && mine <= interval {
            return Learned::Same;
        }
        if estimate <= self.survived {
            self.survived = 0;
        }
        if self.estimate.is_none_or(|e| estimate < e) {
            self.estimate = Some(estimate);
            self.confirmed_at = now;
            self.retest_wait = bounds.max * RETEST_INTERVALS;
        }
        if interval < mine {
            self.interval = Some(interval);
        }
        Learned::Changed
    }

    /// What a worker publishes: the estimate and the interval it keeps alive at.
    pub fn shared(&self, bounds: LearnBounds) -> Option<(Millis, Millis)> {
        Some((self.estimate?, self.keepalive_interval(bounds)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: LearnBounds = LearnBounds {
        min: 1_000,
        max: 60_000,
    };

    /// One isolated death at `at` (judged a burst later).
    fn death(c: &mut IdleCutoff, at: Millis, idle: Millis) {
        c.died(at, idle, false, B);
        c.settle(at + BURST_MS, B);
    }

    #[test]
    fn nothing_learned_means_the_upper_bound() {
        let c = IdleCutoff::default();
        assert_eq!(c.estimate(), None);
        assert_eq!(c.keepalive_interval(B), 60_000);
    }

    #[test]
    fn a_death_at_the_interval_halves_it() {
        let mut c = IdleCutoff::default();
        death(&mut c, 100_000, 60_000);
        assert_eq!(c.estimate(), Some(60_000));
        assert_eq!(c.keepalive_interval(B), 30_000);
        // A longer death is no news.
        death(&mut c, 200_000, 65_000);
        assert_eq!(c.keepalive_interval(B), 30_000);
        assert_eq!(c.evidence, 2);
    }

    #[test]
    fn converges_on_a_silent_cutoff_it_is_never_told() {
        // A NAT forgets flows after 7 s; a silent drop is noticed at the next PING, whose idle
        // spell is the current interval.
        let cutoff = 7_000;
        let mut c = IdleCutoff::default();
        let mut deaths = 0;
        for i in 0..20 {
            let interval = c.keepalive_interval(B);
            if interval >= cutoff {
                deaths += 1;
                death(&mut c, i * 100_000, interval);
            } else {
                c.survived(interval);
            }
        }
        assert!(c.keepalive_interval(B) < cutoff);
        assert_eq!(deaths, 4, "60 s → 30 s → 15 s → 7.5 s → 3.75 s");
    }

    #[test]
    fn redis_timeout_fins_at_a_short_age_take_two_deaths_not_one() {
        // Redis `timeout 2`: a FIN at 2.5 s of idle, long before the keepalive is due. One such
        // death alone halves the interval; the second lands it under the cutoff.
        let mut c = IdleCutoff::default();
        death(&mut c, 10_000, 2_500);
        assert_eq!(c.keepalive_interval(B), 30_000);
        death(&mut c, 50_000, 2_500);
        assert_eq!(c.keepalive_interval(B), 15_000);
        // ... each further one halves again, down to half the cutoff.
        for i in 0..5 {
            death(&mut c, 100_000 + i * 40_000, 2_500);
        }
        assert_eq!(c.keepalive_interval(B), 1_250);
    }

    #[test]
    fn a_restart_is_an_event() {
        // Twenty connections, idle 1 s to 20 s, all closed by Redis at the same moment.
        let mut c = IdleCutoff::default();
        for i in 1..=20 {
            c.died(500_000, i * 1_000, false, B);
        }
        assert_eq!(c.settle(500_000 + BURST_MS, B), Learned::Event(20));
        assert_eq!((c.estimate(), c.keepalive_interval(B)), (None, 60_000));
        assert_eq!(c.events, 20);
    }

    #[test]
    fn a_failover_closing_busy_and_idle_connections_is_an_event() {
        let mut c = IdleCutoff::default();
        c.died(10_000, 30_000, false, B);
        c.died(10_050, 31_000, false, B);
        c.died(10_100, 0, true, B);
        assert_eq!(c.settle(11_000, B), Learned::Event(3));
        assert_eq!(c.estimate(), None);
    }

    #[test]
    fn connections_idle_alike_dying_together_are_a_cutoff() {
        // A batch job ended and its pool idled as one: every connection reaches the NAT's
        // cutoff together and dies at its PING.
        let mut c = IdleCutoff::default();
        for _ in 0..8 {
            c.died(100_000, 60_000, false, B);
        }
        assert_eq!(c.settle(101_000, B), Learned::Changed);
        assert_eq!(c.keepalive_interval(B), 30_000);
    }

    #[test]
    fn a_young_connection_in_the_burst_makes_it_an_event() {
        let mut c = IdleCutoff::default();
        c.died(100_000, 60_000, false, B);
        c.died(100_100, 300, false, B);
        assert_eq!(c.settle(101_100, B), Learned::Event(2));
    }

    #[test]
    fn one_odd_death_halves_and_the_next_long_spell_undoes_it() {
        // A restart seen by a single connection that had been idle 1.03 s: the interval halves,
        // never to the minimum, and a survived spell of the new interval refutes the estimate.
        let mut c = IdleCutoff::default();
        death(&mut c, 10_000, 1_030);
        assert_eq!(c.keepalive_interval(B), 30_000);
        assert_eq!(c.survived(30_000), Learned::Changed);
        assert_eq!((c.estimate(), c.keepalive_interval(B)), (None, 60_000));
    }

    #[test]
    fn a_black_hole_steps_down_once_per_generation_of_pings() {
        // Every PING dies; connections PING at their own times. Deaths at the interval in use
        // when they pinged: the interval halves once for those, again only for PINGs sent at
        // the new interval.
        let mut c = IdleCutoff::default();
        for i in 0..10 {
            death(&mut c, 100_000 + i * 2_000, 60_000);
        }
        assert_eq!(c.keepalive_interval(B), 30_000);
        death(&mut c, 150_000, 30_000);
        assert_eq!(c.keepalive_interval(B), 15_000);
    }

    #[test]
    fn an_estimate_is_retested_and_a_survived_canary_refutes_it() {
        let mut c = IdleCutoff::default();
        death(&mut c, 10_000, 4_000);
        assert_eq!(c.keepalive_interval(B), 30_000);
        death(&mut c, 20_000, 4_000);
        death(&mut c, 30_000, 4_000);
        death(&mut c, 40_000, 4_000);
        assert_eq!(c.keepalive_interval(B), 3_000);
        // Ten maximum intervals after it was last confirmed (the last burst, judged at 41 s).
        assert!(!c.retest_due(41_000 + 600_000 - 1));
        assert!(c.retest_due(41_000 + 600_000));
        assert_eq!(c.canary_spell(B), Some(8_000));
        c.retest_started(640_000);
        assert!(!c.retest_due(640_001));
        assert_eq!(c.survived(8_000), Learned::Changed);
        assert_eq!(c.keepalive_interval(B), 60_000);
        assert!(!c.retest_due(10_000_000));
    }

    #[test]
    fn a_canary_that_dies_confirms_and_the_next_test_waits_twice_as_long() {
        let mut c = IdleCutoff::default();
        death(&mut c, 10_000, 4_000);
        assert!(c.retest_due(11_000 + 600_000));
        c.retest_started(611_000);
        // The canary dies after 8 s of silence (judged at 621 s): consistent with the estimate.
        death(&mut c, 620_000, 8_000);
        assert_eq!(c.estimate(), Some(4_000));
        assert!(!c.retest_due(621_000 + 1_200_000 - 1));
        assert!(c.retest_due(621_000 + 1_200_000));
    }

    #[test]
    fn deaths_below_min_are_events() {
        let mut c = IdleCutoff::default();
        c.died(0, 300, false, B);
        assert_eq!(c.settle(BURST_MS, B), Learned::Event(1));
        assert_eq!(c.estimate(), None);
    }

    #[test]
    fn adopting_another_workers_estimate() {
        let mut c = IdleCutoff::default();
        c.survived(5_000);
        assert_eq!(c.adopt(Some((4_000, 2_000)), B, 0), Learned::Changed);
        assert_eq!(c.keepalive_interval(B), 2_000);
        assert_eq!(c.adopt(Some((4_000, 2_000)), B, 0), Learned::Same);
        // A higher interval elsewhere does not loosen this worker's.
        assert_eq!(c.adopt(Some((4_000, 30_000)), B, 0), Learned::Same);
        assert_eq!(c.adopt(None, B, 0), Learned::Changed);
        assert_eq!(c.keepalive_interval(B), 60_000);
    }

    #[test]
    fn the_interval_stays_within_bounds() {
        let mut c = IdleCutoff::default();
        for i in 0..10 {
            death(&mut c, i * 10_000, 1_200);
        }
        assert_eq!(c.keepalive_interval(B), 1_000);
        let narrow = LearnBounds {
            min: 1_000,
            max: 5_000,
        };
        let mut c = IdleCutoff::default();
        c.died(0, 40_000, false, narrow);
        c.settle(BURST_MS, narrow);
        assert_eq!(c.keepalive_interval(narrow), 5_000);
    }
}
