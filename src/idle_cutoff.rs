//! Learning a path's idle cutoff: how long a connection to one upstream may stay silent before
//! something on the path (a NAT, a load balancer, conntrack, Redis `timeout`) kills it.
//!
//! Evidence comes from idle spells, measured from the last byte in either direction:
//! - a death after an idle spell of `d` (PING unanswered, probe failed, Redis closed or reset
//!   while idle) says the cutoff is at most `d`;
//! - a survival (a reply to the first bytes sent after an idle spell of `s`) says it is above `s`.
//!
//! The estimate is the shortest accepted death. Keepalives then go out at half of it: the
//! learned interval sits comfortably inside the cutoff even when the death was only noticed
//! late (a silent drop is seen at the next PING, not when the path forgot the flow). A death
//! shorter than `min` is not evidence of an idle cutoff (a restart hits busy connections too),
//! and a survival at least as long as the estimate proves it wrong (the path changed): it is
//! dropped, and the interval goes back to `max` until the next death.

use crate::config::LearnBounds;
use crate::duration::Millis;

/// Keepalives go out at this fraction of the learned cutoff.
const SAFETY_DIVISOR: Millis = 2;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdleCutoff {
    /// Shortest idle spell that ended in an accepted death: the cutoff is at most this.
    died_after: Option<Millis>,
    /// Longest idle spell proven survivable since the last accepted death.
    survived: Millis,
    /// Deaths accepted as evidence.
    pub deaths: u64,
}

/// What one observation did to the estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Nothing changed.
    Same,
    /// The estimate changed (shorter cutoff, or an estimate proven wrong and dropped).
    Changed,
}

impl IdleCutoff {
    /// The learned cutoff, if any death was accepted.
    pub fn estimate(&self) -> Option<Millis> {
        self.died_after
    }

    /// The keepalive interval to use for this upstream.
    pub fn keepalive_interval(&self, bounds: LearnBounds) -> Millis {
        match self.died_after {
            Some(cutoff) => (cutoff / SAFETY_DIVISOR).clamp(bounds.min, bounds.max),
            None => bounds.max,
        }
    }

    /// A connection died after `idle_ms` of silence.
    pub fn died(&mut self, idle_ms: Millis, bounds: LearnBounds) -> Learned {
        if idle_ms < bounds.min {
            return Learned::Same;
        }
        if idle_ms <= self.survived {
            // Shorter than a spell proven survivable: the path changed. Start over from here.
            self.survived = 0;
        }
        self.deaths += 1;
        match self.died_after {
            Some(d) if d <= idle_ms => Learned::Same,
            _ => {
                self.died_after = Some(idle_ms);
                Learned::Changed
            }
        }
    }

    /// Take the estimate another worker learned (shared between Envoy's workers).
    pub fn adopt(&mut self, estimate: Option<Millis>) -> Learned {
        if estimate == self.died_after {
            return Learned::Same;
        }
        if estimate.is_some_and(|e| e <= self.survived) {
            self.survived = 0;
        }
        self.died_after = estimate;
        Learned::Changed
    }

    /// The first bytes sent after `idle_ms` of silence were answered.
    pub fn survived(&mut self, idle_ms: Millis) -> Learned {
        self.survived = self.survived.max(idle_ms);
        match self.died_after {
            Some(d) if idle_ms >= d => {
                self.died_after = None;
                Learned::Changed
            }
            _ => Learned::Same,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: LearnBounds = LearnBounds {
        min: 1_000,
        max: 60_000,
    };

    #[test]
    fn nothing_learned_means_the_upper_bound() {
        let c = IdleCutoff::default();
        assert_eq!(c.estimate(), None);
        assert_eq!(c.keepalive_interval(B), 60_000);
    }

    #[test]
    fn a_death_halves_into_the_cutoff_and_only_shorter_deaths_move_it() {
        let mut c = IdleCutoff::default();
        assert_eq!(c.died(60_000, B), Learned::Changed);
        assert_eq!(c.keepalive_interval(B), 30_000);
        assert_eq!(c.died(45_000, B), Learned::Changed);
        assert_eq!(c.estimate(), Some(45_000));
        assert_eq!(c.died(50_000, B), Learned::Same);
        assert_eq!(c.estimate(), Some(45_000));
        assert_eq!(c.deaths, 3);
    }

    #[test]
    fn converges_on_a_silent_cutoff_it_is_never_told() {
        // A NAT forgets flows after 7 s; a silent drop is noticed at the next PING, whose idle
        // spell is the current interval.
        let cutoff = 7_000;
        let mut c = IdleCutoff::default();
        let mut deaths = 0;
        for _ in 0..20 {
            let interval = c.keepalive_interval(B);
            if interval >= cutoff {
                deaths += 1;
                c.died(interval, B);
            } else {
                c.survived(interval);
            }
        }
        assert!(c.keepalive_interval(B) < cutoff);
        assert_eq!(deaths, 4, "60 s → 30 s → 15 s → 7.5 s → 3.75 s");
    }

    #[test]
    fn deaths_below_min_are_not_evidence() {
        let mut c = IdleCutoff::default();
        assert_eq!(c.died(300, B), Learned::Same);
        assert_eq!(c.estimate(), None);
        assert_eq!(c.deaths, 0);
    }

    #[test]
    fn a_survival_past_the_estimate_drops_it() {
        let mut c = IdleCutoff::default();
        c.died(10_000, B);
        assert_eq!(c.survived(5_000), Learned::Same);
        assert_eq!(c.survived(12_000), Learned::Changed);
        assert_eq!(c.estimate(), None);
        assert_eq!(c.keepalive_interval(B), 60_000);
    }

    #[test]
    fn a_death_inside_a_proven_spell_restarts_the_evidence() {
        let mut c = IdleCutoff::default();
        c.survived(20_000);
        assert_eq!(c.died(8_000, B), Learned::Changed);
        assert_eq!(c.estimate(), Some(8_000));
        // The old survival no longer counts against the new estimate.
        assert_eq!(c.survived(4_000), Learned::Same);
        assert_eq!(c.estimate(), Some(8_000));
    }

    #[test]
    fn adopting_another_workers_estimate() {
        let mut c = IdleCutoff::default();
        c.survived(5_000);
        assert_eq!(c.adopt(Some(4_000)), Learned::Changed);
        assert_eq!(c.keepalive_interval(B), 2_000);
        assert_eq!(c.adopt(Some(4_000)), Learned::Same);
        // Its own later evidence still counts.
        assert_eq!(c.died(3_000, B), Learned::Changed);
        assert_eq!(c.adopt(None), Learned::Changed);
        assert_eq!(c.keepalive_interval(B), 60_000);
    }

    #[test]
    fn the_interval_stays_within_bounds() {
        let mut c = IdleCutoff::default();
        c.died(1_200, B);
        assert_eq!(c.keepalive_interval(B), 1_000);
        let narrow = LearnBounds {
            min: 1_000,
            max: 5_000,
        };
        let mut c = IdleCutoff::default();
        c.died(40_000, narrow);
        assert_eq!(c.keepalive_interval(narrow), 5_000);
    }
}
