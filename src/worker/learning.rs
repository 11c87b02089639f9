//! The worker's side of learning idle cutoffs (`keepalive_interval: "auto"`): feeding the
//! connections' deaths and survivals to their upstream's [`IdleCutoff`](crate::idle_cutoff),
//! judging bursts, sharing with the other workers, putting connections on the learned interval,
//! and running the canary that re-tests an estimate.

use super::{arm, Worker};
use crate::duration::{format_duration, Millis};
use crate::host::{ConnectionId, Host};
use crate::metrics::UpstreamMetric;
use crate::session::Event;
use crate::shared_cutoff;
use crate::upstream::{Lesson, UpstreamId};

impl Worker {
    /// What one connection's events teach about its upstream.
    pub(super) fn learn(
        &mut self,
        host: &mut impl Host,
        id: ConnectionId,
        upstream: UpstreamId,
        events: &[Event],
    ) {
        let now = self.clock;
        for event in events {
            if let Some(lesson) = self
                .upstreams
                .observe(upstream, now, event, self.config.learn)
            {
                let why = match event {
                    Event::IdleSurvived { idle_ms } => format!(
                        "a connection survived {} of silence, as long as the learned cutoff or longer: forgetting it",
                        format_duration(*idle_ms)
                    ),
                    _ => String::new(),
                };
                self.teach(host, upstream, lesson, &why);
            }
            if matches!(
                event,
                Event::IdleSurvived { .. } | Event::IdleDeath { .. } | Event::ProbeFailed
            ) {
                self.end_canary_of(host, id, upstream);
            }
        }
    }

    /// About once a second: judge the bursts of deaths that are over, and take what the other
    /// workers learned.
    pub(super) fn poll_learning(&mut self, host: &mut impl Host, now: Millis) {
        let ids: Vec<UpstreamId> = self.upstreams.ids().collect();
        for upstream in ids {
            if let Some(lesson) = self.upstreams.settle(upstream, now, self.config.learn) {
                self.teach(host, upstream, lesson, "");
            }
            let Some(cluster) = self.upstreams.get(upstream).map(|u| u.cluster.clone()) else {
                continue;
            };
            let Some((shared, cas)) = shared_cutoff::read(host, &cluster) else {
                continue;
            };
            if let Some(Lesson::Interval(interval)) =
                self.upstreams
                    .adopt(upstream, shared, cas, self.config.learn, now)
            {
                if let (Some(u), Some(bounds)) =
                    (self.upstreams.get_mut(upstream), self.config.learn)
                {
                    u.published = u.cutoff.shared(bounds);
                }
                let why = match shared {
                    Some((estimate, _)) => format!(
                        "another worker learned that the path's idle cutoff is at most {}",
                        format_duration(estimate)
                    ),
                    None => "another worker forgot the learned cutoff".to_string(),
                };
                self.apply(host, upstream, interval, &why);
            }
        }
    }

    /// Judge every pending burst now, complete or not (this worker has no connection left).
    pub(super) fn judge_now(&mut self, host: &mut impl Host) {
        let now = self.clock + crate::idle_cutoff::BURST_MS;
        let ids: Vec<UpstreamId> = self.upstreams.ids().collect();
        for upstream in ids {
            if let Some(lesson) = self.upstreams.settle(upstream, now, self.config.learn) {
                self.teach(host, upstream, lesson, "");
            }
        }
    }

    /// A connection to `upstream` is new on this worker: start it on what every worker has
    /// learned so far.
    pub(super) fn adopt_one(&mut self, host: &mut impl Host, upstream: UpstreamId) {
        let now = self.clock;
        let Some(cluster) = self.upstreams.get(upstream).map(|u| u.cluster.clone()) else {
            return;
        };
        let Some((shared, cas)) = shared_cutoff::read(host, &cluster) else {
            return;
        };
        if let Some(Lesson::Interval(interval)) =
            self.upstreams
                .adopt(upstream, shared, cas, self.config.learn, now)
        {
            if let (Some(u), Some(bounds)) = (self.upstreams.get_mut(upstream), self.config.learn) {
                u.published = u.cutoff.shared(bounds);
            }
            // The store outlives a listener update: "another worker" may be this process's
            // previous configuration.
            self.apply(
                host,
                upstream,
                interval,
                "another worker learned the path's cutoff",
            );
        }
    }

    /// Carry out a lesson: an event is counted and logged; a new interval is shared with the
    /// other workers and followed by every connection to the upstream.
    fn teach(&mut self, host: &mut impl Host, upstream: UpstreamId, lesson: Lesson, why: &str) {
        let Some(u) = self.upstreams.get(upstream) else {
            return;
        };
        let cluster = u.cluster.clone();
        match lesson {
            Lesson::Event(n) => {
                host.upstream_add((upstream, &cluster), UpstreamMetric::IdleEvents, n as i64);
                log::info!("upstream {cluster}: {n} connection(s) died together whatever their idle (a restart, failover, reset storm, black hole or drain): not an idle cutoff, nothing learned");
            }
            Lesson::Interval(interval) => {
                let Some(bounds) = self.config.learn else {
                    return;
                };
                let Some(u) = self.upstreams.get_mut(upstream) else {
                    return;
                };
                let estimate = u.cutoff.estimate();
                let shared = u.cutoff.shared(bounds);
                let before = std::mem::replace(&mut u.published, shared);
                shared_cutoff::publish(host, &cluster, shared, before.map(|(e, _)| e));
                let why = match (why, estimate) {
                    ("", Some(e)) => format!(
                        "connections died after {} of silence, so the path's idle cutoff is at most that",
                        format_duration(e)
                    ),
                    _ => why.to_string(),
                };
                self.apply(host, upstream, interval, &why);
            }
        }
    }

    /// An upstream's interval changed: every connection to it follows at once (the canary of a
    /// re-test keeps its longer spell until the test ends).
    fn apply(&mut self, host: &mut impl Host, upstream: UpstreamId, interval: Millis, why: &str) {
        let Some(u) = self.upstreams.get(upstream) else {
            return;
        };
        log::info!(
            "upstream {}: {why}; keepalive interval now {}",
            u.cluster,
            format_duration(interval)
        );
        let estimate = u.cutoff.estimate().unwrap_or(0);
        let canary = u.canary;
        let up = (upstream, u.cluster.as_str());
        host.upstream_record(up, UpstreamMetric::IdleCutoffMs, estimate);
        host.upstream_record(up, UpstreamMetric::KeepaliveIntervalMs, interval);
        for (&id, entry) in self.connections.iter_mut() {
            let s = &mut entry.session;
            if s.upstream() == upstream
                && Some(id) != canary
                && s.keepalive_interval() != Some(interval)
            {
                s.set_keepalive_interval(Some(interval));
                let deadline = s.next_deadline();
                arm(host, id, s, deadline);
            }
        }
    }

    /// Connection `id`'s keepalive is due: if its upstream's estimate is due for a re-test and
    /// the connection is idle, it becomes the canary instead: it idles up to the canary spell,
    /// with a command arriving after the estimate probed first. True if it did.
    pub(super) fn start_canary(&mut self, id: ConnectionId, now: Millis) -> bool {
        let Some(bounds) = self.config.learn else {
            return false;
        };
        let Some(entry) = self.connections.get_mut(&id) else {
            return false;
        };
        let s = &mut entry.session;
        let Some(u) = self.upstreams.get_mut(s.upstream()) else {
            return false;
        };
        if u.canary.is_some() || !u.cutoff.retest_due(now) || !s.is_idle() {
            return false;
        }
        let (Some(spell), Some(estimate)) = (u.cutoff.canary_spell(bounds), u.cutoff.estimate())
        else {
            return false;
        };
        u.cutoff.retest_started(now);
        u.canary = Some(id);
        s.set_keepalive_interval(Some(spell));
        s.set_probe_after(Some(estimate));
        log::info!(
            "upstream {}: re-testing the learned cutoff of {}: connection {id} idles up to {}",
            u.cluster,
            format_duration(estimate),
            format_duration(spell)
        );
        true
    }

    /// The canary's test is over (it survived, died, or went away): back to the upstream's
    /// interval and the configured probe.
    pub(super) fn end_canary_of(
        &mut self,
        host: &mut impl Host,
        id: ConnectionId,
        upstream: UpstreamId,
    ) {
        let learn = self.config.learn;
        let probe_after = self.config.probe_after;
        let Some(u) = self.upstreams.get_mut(upstream) else {
            return;
        };
        if u.canary != Some(id) {
            return;
        }
        u.canary = None;
        let interval = learn.map(|b| u.cutoff.keepalive_interval(b));
        if let Some(entry) = self.connections.get_mut(&id) {
            let s = &mut entry.session;
            s.set_keepalive_interval(interval);
            s.set_probe_after(probe_after);
            let deadline = s.next_deadline();
            arm(host, id, s, deadline);
        }
    }
}
