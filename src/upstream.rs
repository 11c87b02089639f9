//! The upstreams a worker's connections go to, by Envoy cluster, each with what was learned
//! about its path's idle cutoff.

use crate::config::LearnBounds;
use crate::duration::Millis;
use crate::host::ConnectionId;
use crate::idle_cutoff::{IdleCutoff, Learned};
use crate::session::Event;

/// 1-based index into [`Upstreams`]; 0 means "not known (yet)".
pub type UpstreamId = u16;

/// Beyond this many clusters per worker, new ones are tracked in the global stats only: the
/// per-upstream stats and estimates stay bounded whatever the mesh sends through the filter.
pub const MAX_UPSTREAMS: usize = 256;

#[derive(Debug)]
pub struct Upstream {
    pub cluster: String,
    pub cutoff: IdleCutoff,
    /// CAS of the shared (all workers') estimate last looked at; 0 = none seen.
    pub shared_cas: u32,
    /// The connection re-testing the estimate, if any (see `IdleCutoff::retest_due`).
    pub canary: Option<ConnectionId>,
    /// What this worker last published or adopted (estimate, interval).
    pub published: Option<(Millis, Millis)>,
}

#[derive(Debug, Default)]
pub struct Upstreams {
    list: Vec<Upstream>,
}

/// What learning did for one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lesson {
    /// The upstream's keepalive interval changed: its connections follow.
    Interval(Millis),
    /// A burst of deaths was an event and taught nothing (its number of deaths).
    Event(u64),
}

impl Upstreams {
    /// The id of `cluster`, registering it on first sight (`true` when new). None when the
    /// table is full.
    pub fn register(&mut self, cluster: &str) -> Option<(UpstreamId, bool)> {
        if let Some(i) = self.list.iter().position(|u| u.cluster == cluster) {
            return Some((i as UpstreamId + 1, false));
        }
        if self.list.len() >= MAX_UPSTREAMS {
            return None;
        }
        self.list.push(Upstream {
            cluster: cluster.to_string(),
            cutoff: IdleCutoff::default(),
            shared_cas: 0,
            canary: None,
            published: None,
        });
        Some((self.list.len() as UpstreamId, true))
    }

    pub fn get(&self, id: UpstreamId) -> Option<&Upstream> {
        self.list.get(usize::from(id).checked_sub(1)?)
    }

    pub fn get_mut(&mut self, id: UpstreamId) -> Option<&mut Upstream> {
        self.list.get_mut(usize::from(id).checked_sub(1)?)
    }

    /// The keepalive interval for `id`'s connections when learning (None: not learning, or
    /// unknown upstream).
    pub fn interval(&self, id: UpstreamId, learn: Option<LearnBounds>) -> Option<Millis> {
        let bounds = learn?;
        Some(self.get(id)?.cutoff.keepalive_interval(bounds))
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = UpstreamId> {
        (1..=self.list.len()).filter_map(|i| UpstreamId::try_from(i).ok())
    }

    /// Another worker's estimate and interval for `id`, seen with `cas`.
    pub fn adopt(
        &mut self,
        id: UpstreamId,
        shared: Option<(Millis, Millis)>,
        cas: u32,
        learn: Option<LearnBounds>,
        now: Millis,
    ) -> Option<Lesson> {
        let bounds = learn?;
        let upstream = self.get_mut(id)?;
        if upstream.shared_cas == cas {
            return None;
        }
        upstream.shared_cas = cas;
        lesson(
            upstream.cutoff.adopt(shared, bounds, now),
            &upstream.cutoff,
            bounds,
        )
    }

    /// Learn from one connection's event at `now`.
    pub fn observe(
        &mut self,
        id: UpstreamId,
        now: Millis,
        event: &Event,
        learn: Option<LearnBounds>,
    ) -> Option<Lesson> {
        let bounds = learn?;
        let upstream = self.get_mut(id)?;
        let learned = match *event {
            Event::IdleDeath { idle_ms } => upstream.cutoff.died(now, idle_ms, false, bounds),
            Event::BusyDeath => upstream.cutoff.died(now, 0, true, bounds),
            Event::IdleSurvived { idle_ms } => upstream.cutoff.survived(idle_ms),
            _ => Learned::Same,
        };
        lesson(learned, &upstream.cutoff, bounds)
    }

    /// Judge the bursts of deaths that are complete at `now`.
    pub fn settle(
        &mut self,
        id: UpstreamId,
        now: Millis,
        learn: Option<LearnBounds>,
    ) -> Option<Lesson> {
        let bounds = learn?;
        let upstream = self.get_mut(id)?;
        if !upstream.cutoff.pending() {
            return None;
        }
        lesson(
            upstream.cutoff.settle(now, bounds),
            &upstream.cutoff,
            bounds,
        )
    }
}

fn lesson(learned: Learned, cutoff: &IdleCutoff, bounds: LearnBounds) -> Option<Lesson> {
    match learned {
        Learned::Same => None,
        Learned::Changed => Some(Lesson::Interval(cutoff.keepalive_interval(bounds))),
        Learned::Event(n) => Some(Lesson::Event(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Option<LearnBounds> = Some(LearnBounds {
        min: 1_000,
        max: 60_000,
    });

    #[test]
    fn clusters_get_stable_ids_and_the_table_is_bounded() {
        let mut u = Upstreams::default();
        assert_eq!(u.register("redis"), Some((1, true)));
        assert_eq!(u.register("cache"), Some((2, true)));
        assert_eq!(u.register("redis"), Some((1, false)));
        assert_eq!(u.get(2).map(|x| x.cluster.as_str()), Some("cache"));
        assert!(u.get(0).is_none());
        for i in 2..MAX_UPSTREAMS {
            assert!(u.register(&format!("c{i}")).is_some());
        }
        assert_eq!(u.register("one-too-many"), None);
        assert_eq!(u.register("cache"), Some((2, false)));
    }

    #[test]
    fn deaths_change_only_their_upstream() {
        let mut u = Upstreams::default();
        u.register("nat");
        u.register("direct");
        assert_eq!(u.interval(1, B), Some(60_000));
        assert_eq!(
            u.observe(1, 100_000, &Event::IdleDeath { idle_ms: 8_000 }, B),
            None
        );
        // Judged once its burst is over.
        assert_eq!(u.settle(1, 101_000, B), Some(Lesson::Interval(30_000)));
        assert_eq!(u.interval(1, B), Some(30_000));
        assert_eq!(u.interval(2, B), Some(60_000));
        // Without learning nothing is learned.
        assert_eq!(
            u.observe(2, 200_000, &Event::IdleDeath { idle_ms: 9_000 }, None),
            None
        );
        assert_eq!(u.interval(2, None), None);
    }
}
