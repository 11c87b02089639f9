//! The root context: configuration, the worker's live connections, and the tick that sends
//! keepalives and closes dead links.

use super::host::{self, Level};
use super::shared_cutoff;
use super::stats;
use super::stream::Connection;
use crate::config::Config;
use crate::context_map::ContextMap;
use crate::duration::format_duration;
use crate::metrics::{Metric, UpstreamMetric};
use crate::schedule::Schedule;
use crate::session::{Event, Session, TickAction, PING};
use crate::upstream::{IntervalChange, UpstreamId, Upstreams};
use std::cell::RefCell;
use std::rc::Rc;

/// What a root context and its connections share (one worker thread, no locking needed).
pub struct Registry {
    pub config: Config,
    /// Boxed: the table then holds pointers, and its power-of-two growth costs 8 bytes a slot
    /// instead of a whole Session.
    pub sessions: ContextMap<Box<Session>>,
    pub schedule: Schedule,
    pub upstreams: Upstreams,
}

impl Registry {
    /// Stats, log lines and learning for one connection's events.
    pub fn settle(&mut self, id: u32, upstream: UpstreamId, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let cluster = self
            .upstreams
            .get(upstream)
            .map_or("", |u| u.cluster.as_str());
        stats::record_events(id, upstream, cluster, events);
        if self.config.learn.is_none() {
            return;
        }
        for event in events {
            let before = self
                .upstreams
                .get(upstream)
                .and_then(|u| u.cutoff.estimate());
            let Some(change) = self.upstreams.observe(upstream, event, self.config.learn) else {
                continue;
            };
            let why = match event {
                Event::IdleDeath { idle_ms } => format!(
                    "a connection died after {} of silence, so the path's idle cutoff is at most that",
                    format_duration(*idle_ms)
                ),
                Event::IdleSurvived { idle_ms } => format!(
                    "a connection survived {} of silence, longer than the learned cutoff: forgetting it",
                    format_duration(*idle_ms)
                ),
                _ => "new evidence".to_string(),
            };
            if let Some(u) = self.upstreams.get(upstream) {
                shared_cutoff::publish(&u.cluster, u.cutoff.estimate(), before);
            }
            self.apply(change, &why);
        }
    }

    /// Take what other workers learned (see shared_cutoff).
    pub fn adopt_shared(&mut self) {
        if self.config.learn.is_none() {
            return;
        }
        for index in 0..self.upstreams.len() {
            let id = index as UpstreamId + 1;
            let Some(cluster) = self.upstreams.get(id).map(|u| u.cluster.clone()) else {
                continue;
            };
            let Some((estimate, cas)) = shared_cutoff::read(&cluster) else {
                continue;
            };
            if let Some(change) = self.upstreams.adopt(id, estimate, cas, self.config.learn) {
                let why = match estimate {
                    Some(ms) => format!(
                        "another worker learned that the path's idle cutoff is at most {}",
                        format_duration(ms)
                    ),
                    None => "another worker forgot the learned cutoff".to_string(),
                };
                self.apply(change, &why);
            }
        }
    }

    /// An upstream's learned interval changed: every connection to it follows at once.
    fn apply(&mut self, change: IntervalChange, why: &str) {
        let Some(upstream) = self.upstreams.get(change.upstream) else {
            return;
        };
        let estimate = upstream.cutoff.estimate();
        host::log(
            Level::Info,
            &format!(
                "redis-idle-guard: upstream {}: {why}; keepalive interval now {}",
                upstream.cluster,
                format_duration(change.interval)
            ),
        );
        stats::upstream_record(
            change.upstream,
            UpstreamMetric::IdleCutoffMs,
            estimate.unwrap_or(0),
        );
        stats::upstream_record(
            change.upstream,
            UpstreamMetric::KeepaliveIntervalMs,
            change.interval,
        );
        for (&id, session) in self.sessions.iter_mut() {
            if session.upstream() == change.upstream {
                follow_interval(&mut self.schedule, id, session, change.interval);
            }
        }
    }

    /// The connection's upstream cluster became known.
    pub fn identify(&mut self, id: u32, cluster: &str) {
        let Some((upstream, new)) = self.upstreams.register(cluster) else {
            return;
        };
        let learned = self.upstreams.interval(upstream, self.config.learn);
        if new {
            stats::define_upstream(upstream, cluster);
            let interval = learned.or(self.config.keepalive_interval).unwrap_or(0);
            stats::upstream_record(upstream, UpstreamMetric::KeepaliveIntervalMs, interval);
            stats::upstream_record(upstream, UpstreamMetric::IdleCutoffMs, 0);
        }
        stats::upstream_add(upstream, UpstreamMetric::ConnectionsOpened, 1);
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        session.set_upstream(upstream);
        if let Some(interval) = learned {
            follow_interval(&mut self.schedule, id, session, interval);
        }
    }

    pub fn remove(&mut self, id: u32) {
        if self.sessions.remove(&id).is_some() {
            self.schedule.forget(id);
            stats::add(Metric::Connections, -1);
        }
    }
}

/// Put a connection on its upstream's keepalive interval, re-arming its timer if it changed.
fn follow_interval(schedule: &mut Schedule, id: u32, session: &mut Session, interval: u64) {
    if session.keepalive_interval() != Some(interval) {
        session.set_keepalive_interval(Some(interval));
        let next = session.next_deadline();
        schedule.arm_cached(id, next, &mut session.armed);
    }
}

pub struct Root {
    registry: Rc<RefCell<Registry>>,
    due: Vec<u32>,
    /// When this worker last looked at the other workers' learned cutoffs.
    last_shared_poll: u64,
}

impl Root {
    pub fn new(_context_id: u32) -> Root {
        Root {
            registry: Rc::new(RefCell::new(Registry {
                config: Config::default(),
                sessions: ContextMap::default(),
                schedule: Schedule::default(),
                upstreams: Upstreams::default(),
            })),
            due: Vec::new(),
            last_shared_poll: 0,
        }
    }
}

thread_local! {
    static REPORTED_MEMORY: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Add this VM's linear memory growth to the gauge: with one VM per worker, the gauge is the
/// sum over workers (a set would show only the last worker that ticked).
fn report_vm_memory() {
    let now = (core::arch::wasm32::memory_size(0) as u64) * 65_536;
    let before = REPORTED_MEMORY.with(|r| r.replace(now));
    if now != before {
        stats::add(Metric::VmMemoryBytes, now as i64 - before as i64);
    }
}

/// Fine enough to act within a tenth of the shortest timer; coarse enough to cost nothing.
/// No timer at all when neither keepalives nor probes are on.
fn tick_period_ms(config: &Config) -> u32 {
    let shortest = match (config.shortest_keepalive(), config.probe_after) {
        (None, None) => return 0,
        (Some(interval), _) => interval.min(config.ping_timeout),
        (None, Some(_)) => config.ping_timeout,
    };
    (shortest / 10).clamp(10, 1_000) as u32
}

impl Root {
    pub fn on_vm_start(&mut self, _size: usize) -> bool {
        stats::define_all();
        true
    }

    pub fn on_configure(&mut self, size: usize) -> bool {
        stats::define_all();
        let bytes = match host::plugin_configuration(size) {
            Ok(b) => b,
            Err(e) => {
                host::log(
                    Level::Error,
                    &format!("redis-idle-guard: cannot read the plugin configuration ({e:?})"),
                );
                return false;
            }
        };
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                // Returning false makes Envoy reject the configuration; this line says why.
                host::log(Level::Error, &format!("redis-idle-guard: {e}"));
                return false;
            }
        };
        let period = tick_period_ms(&config);
        if let Err(e) = host::set_tick_period_ms(period) {
            host::log(
                Level::Error,
                &format!("redis-idle-guard: cannot set the tick period ({e:?})"),
            );
            return false;
        }
        host::log(
            Level::Info,
            &format!(
                "redis-idle-guard: configured: {} (tick {period}ms)",
                config.describe()
            ),
        );
        let Ok(mut registry) = self.registry.try_borrow_mut() else {
            return false;
        };
        registry.config = config;
        true
    }

    pub fn on_tick(&mut self) {
        report_vm_memory();
        let Ok(now) = host::now_ms() else { return };
        let Ok(mut guard) = self.registry.try_borrow_mut() else {
            return;
        };
        let registry = &mut *guard;
        if now.saturating_sub(self.last_shared_poll) >= shared_cutoff::POLL_MS {
            self.last_shared_poll = now;
            registry.adopt_shared();
        }
        self.due.clear();
        registry.schedule.take_due(now, &mut self.due);
        for &id in &self.due {
            let Some(session) = registry.sessions.get_mut(&id) else {
                continue;
            };
            // take_due disarmed it.
            session.armed = None;
            let mut action = session.on_tick(now);
            if action == TickAction::SendPing {
                // Appending to the paused read buffer works only while Envoy holds it (the
                // last on_downstream_data returned Pause); otherwise the host says BadArgument.
                let injected =
                    host::set_effective_context(id).and_then(|()| host::append_downstream(PING));
                action = match injected {
                    Ok(()) => {
                        session.ping_sent(now);
                        if let Err(e) = host::continue_downstream() {
                            host::log(Level::Warn, &format!("redis-idle-guard: connection {id}: resuming after the keepalive refused ({e:?}); it goes out with the next client bytes"));
                        }
                        TickAction::None
                    }
                    Err(e) => {
                        host::log(Level::Debug, &format!("redis-idle-guard: connection {id}: keepalive injection refused ({e:?})"));
                        session.ping_refused(now)
                    }
                };
            }
            if let TickAction::Close(_) = action {
                let closed =
                    host::set_effective_context(id).and_then(|()| host::close_downstream());
                if let Err(e) = closed {
                    host::log(
                        Level::Warn,
                        &format!("redis-idle-guard: connection {id}: close refused ({e:?})"),
                    );
                }
            }
            let events = session.take_events();
            let upstream = session.upstream();
            let next = session.next_deadline();
            registry.schedule.arm_cached(id, next, &mut session.armed);
            registry.settle(id, upstream, &events);
        }
    }

    pub fn new_connection(&self, context_id: u32) -> Connection {
        Connection::new(context_id, Rc::clone(&self.registry))
    }
}
