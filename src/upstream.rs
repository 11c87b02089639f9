//! The upstreams a worker's connections go to, by Envoy cluster, each with what was learned
//! about its path's idle cutoff.

use crate::config::LearnBounds;
use crate::duration::Millis;
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
}

#[derive(Debug, Default)]
pub struct Upstreams {
    list: Vec<Upstream>,
}

/// A change of an upstream's keepalive interval, to apply to its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntervalChange {
    pub upstream: UpstreamId,
    pub interval: Millis,
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
        });
        Some((self.list.len() as UpstreamId, true))
    }

    pub fn get(&self, id: UpstreamId) -> Option<&Upstream> {
        self.list.get(usize::from(id).checked_sub(1)?)
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

    /// Another worker's estimate for `id`, seen with `cas`. Returns the new interval when it
    /// changed this worker's.
    pub fn adopt(
        &mut self,
        id: UpstreamId,
        estimate: Option<Millis>,
        cas: u32,
        learn: Option<LearnBounds>,
    ) -> Option<IntervalChange> {
        let bounds = learn?;
        let upstream = self.list.get_mut(usize::from(id).checked_sub(1)?)?;
        if upstream.shared_cas == cas {
            return None;
        }
        upstream.shared_cas = cas;
        let learned = upstream.cutoff.adopt(estimate);
        let interval = upstream.cutoff.keepalive_interval(bounds);
        (learned == Learned::Changed).then_some(IntervalChange {
            upstream: id,
            interval,
        })
    }

    /// Learn from one connection's event. Returns the upstream's new interval when it changed.
    pub fn observe(
        &mut self,
        id: UpstreamId,
        event: &Event,
        learn: Option<LearnBounds>,
    ) -> Option<IntervalChange> {
        let bounds = learn?;
        let upstream = self.list.get_mut(usize::from(id).checked_sub(1)?)?;
        let learned = match *event {
            Event::IdleDeath { idle_ms } => upstream.cutoff.died(idle_ms, bounds),
            Event::IdleSurvived { idle_ms } => upstream.cutoff.survived(idle_ms),
            _ => Learned::Same,
        };
        let interval = upstream.cutoff.keepalive_interval(bounds);
        (learned == Learned::Changed).then_some(IntervalChange {
            upstream: id,
            interval,
        })
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
        let change = u.observe(1, &Event::IdleDeath { idle_ms: 8_000 }, B);
        assert_eq!(
            change,
            Some(IntervalChange {
                upstream: 1,
                interval: 4_000
            })
        );
        assert_eq!(u.interval(1, B), Some(4_000));
        assert_eq!(u.interval(2, B), Some(60_000));
        // A second, longer death changes nothing; without learning nothing is learned.
        assert_eq!(u.observe(1, &Event::IdleDeath { idle_ms: 9_000 }, B), None);
        assert_eq!(
            u.observe(2, &Event::IdleDeath { idle_ms: 9_000 }, None),
            None
        );
        assert_eq!(u.interval(2, None), None);
    }
}
