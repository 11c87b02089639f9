//! What one Envoy worker holds for one filter configuration: its connections' sessions, when
//! each must next be woken, the upstreams they go to and what was learned about those. Every
//! decision is made here; an adapter translates its host's callbacks into these calls, carries
//! out what they return (send a PING, release held bytes, close), and reports back.
//!
//! Calls never reach the host while they run, except through [`Host`] (a timer, stats, the
//! shared store), which must not call back in; so an adapter may hold the worker borrowed for
//! a call, and must release it before it carries out the result.

use crate::config::Config;
use crate::context_map::ContextMap;
use crate::duration::Millis;
use crate::host::{Cluster, ConnectionId, DataCallback, Host};
use crate::metrics::{Metric, UpstreamMetric};
use crate::report;
use crate::session::{CloseReason, Event, Session, TickAction};
use crate::shared_cutoff;
use crate::upstream::{UpstreamId, Upstreams};

mod learning;

/// What a data callback's bytes led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    /// The filter still follows the client's bytes (the wasm build keeps the read buffer
    /// paused for its keepalives while this holds).
    pub following: bool,
    /// Close the client connection now (the reason is already counted and logged).
    pub close: Option<CloseReason>,
}

/// What a wake asks of the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    Nothing,
    /// Send [`PING`](crate::session::PING) towards Redis now, then call
    /// [`Worker::ping_sent`] or [`Worker::ping_refused`].
    SendPing,
    /// Close the client connection (counted and logged already).
    Close(CloseReason),
}

/// A connection whose cluster is still unknown after this many data callbacks is counted in
/// the global stats only.
const UPSTREAM_LOOKUPS: u8 = 4;

struct Entry {
    /// Boxed: the table then holds pointers, and its power-of-two growth costs 8 bytes a slot
    /// instead of a whole Session.
    session: Box<Session>,
    /// Data callbacks left in which to look up the upstream cluster (Envoy knows it once
    /// tcp_proxy has connected); 0 once known or given up.
    lookups_left: u8,
}

pub struct Worker {
    config: Config,
    connections: ContextMap<Entry>,
    upstreams: Upstreams,
    poll: Poll,
    /// The latest time any call brought (for events recorded by calls that bring none).
    clock: Millis,
}

/// With learning on, one connection (the carrier) also wakes every [`shared_cutoff::POLL_MS`]
/// to look at what other workers learned: a worker has no timer of its own in every host.
#[derive(Default)]
struct Poll {
    carrier: Option<ConnectionId>,
    next: Millis,
}

/// A session's events, taken out of it to be recorded once its entry is no longer borrowed.
type Pending = Option<(UpstreamId, Vec<Event>)>;

impl Worker {
    pub fn new(config: Config) -> Worker {
        Worker {
            config,
            connections: ContextMap::default(),
            upstreams: Upstreams::default(),
            poll: Poll::default(),
            clock: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// A new client connection. `now` is None when the host has no clock: the connection then
    /// passes through untouched.
    pub fn open(&mut self, host: &mut impl Host, id: ConnectionId, now: Option<Millis>) {
        let Some(now) = now else {
            log::warn!("connection {id}: no host clock; passing through");
            host.add(Metric::Passthrough, 1);
            return;
        };
        self.clock = self.clock.max(now);
        let mut session = Box::new(Session::new(&self.config, now));
        session.set_sends_before_client_bytes(host.sends_before_client_bytes());
        session.spread_keepalives(spread_of(id));
        let entry = Entry {
            session,
            lookups_left: UPSTREAM_LOOKUPS,
        };
        if self.connections.insert(id, entry).is_none() {
            host.add(Metric::Connections, 1);
        }
        self.update(host, id, |_| ());
    }

    /// The connection is gone (its context or filter is being destroyed).
    pub fn remove(&mut self, host: &mut impl Host, id: ConnectionId) {
        if let Some(entry) = self.connections.remove(&id) {
            host.add(Metric::Connections, -1);
            self.end_canary_of(host, id, entry.session.upstream());
        }
        if self.poll.carrier == Some(id) {
            // Hand the polls on at once: a burst of deaths waits to be judged.
            self.poll.carrier = self.connections.keys().next().copied();
            match self.poll.carrier {
                Some(next) => {
                    self.update(host, next, |_| ());
                }
                // No connection left on this worker to die in the burst or to carry the polls:
                // judge now, so that the other workers hear of it.
                None => self.judge_now(host),
            }
        }
    }

    /// Whether `id` has a session here (the tests' fake hosts look).
    pub fn is_tracked(&self, id: ConnectionId) -> bool {
        self.connections.contains_key(&id)
    }

    /// Client bytes, on their way to Redis. A read that lies wholly inside a payload the filter
    /// skips asks the host nothing (nothing can be sent before that frame ends, so the bytes
    /// just go on).
    pub fn on_client_data(
        &mut self,
        host: &mut impl Host,
        id: ConnectionId,
        size: usize,
        end_of_stream: bool,
        callback: &mut impl DataCallback,
    ) -> Verdict {
        let Some(entry) = self.connections.get_mut(&id) else {
            return Verdict::default();
        };
        let identified = if entry.lookups_left > 0 {
            identify(&mut self.upstreams, &self.config, host, id, entry, callback)
        } else {
            None
        };
        let s = &mut entry.session;
        if !end_of_stream && s.skip_client_payload(size) {
            return Verdict::default();
        }
        let Some(now) = callback.now() else {
            return Verdict::default();
        };
        self.clock = self.clock.max(now);
        // Before the data: bytes held by a probe must go out ahead of the client's FIN.
        if end_of_stream {
            s.client_closed();
        }
        s.on_client_data(now, &mut callback.buffer());
        let verdict = Verdict {
            following: !s.passes_requests_through(),
            close: s.take_close(),
        };
        let pending = settle(&mut self.poll, &self.config, host, id, s);
        self.record(host, id, pending);
        self.identified(host, identified);
        verdict
    }

    /// Redis bytes, on their way to the client (the filter's own replies are cut out of the
    /// callback's buffer). Returns held client bytes to send towards Redis now (a probe was
    /// answered: the adapter sends them, or calls [`Worker::release_failed`]) and whether to
    /// close.
    pub fn on_server_data(
        &mut self,
        host: &mut impl Host,
        id: ConnectionId,
        size: usize,
        end_of_stream: bool,
        callback: &mut impl DataCallback,
    ) -> (Option<Vec<u8>>, Option<CloseReason>) {
        let Some(entry) = self.connections.get_mut(&id) else {
            return (None, None);
        };
        let identified = if entry.lookups_left > 0 {
            identify(&mut self.upstreams, &self.config, host, id, entry, callback)
        } else {
            None
        };
        let s = &mut entry.session;
        if !end_of_stream && s.skip_server_payload(size) {
            return (None, None);
        }
        // A reply owed promptly is dated by the session's last activity, a lower bound of now
        // (see `Session::reply_time_hint`): no clock read on most replies.
        let hint = if end_of_stream {
            None
        } else {
            s.reply_time_hint()
        };
        let Some(now) = hint.or_else(|| callback.now()) else {
            return (None, None);
        };
        self.clock = self.clock.max(now);
        s.on_server_data(now, &mut callback.buffer());
        // Redis's FIN, on its way to the client: tcp_proxy closes the client connection next.
        // While the client is idle, that close is the reconnect signal.
        if end_of_stream {
            s.server_closed(now);
        }
        let release = s.take_release();
        let close = s.take_close();
        let pending = settle(&mut self.poll, &self.config, host, id, s);
        self.record(host, id, pending);
        self.identified(host, identified);
        (release, close)
    }

    /// A connection's upstream became known: with learning on, it starts on what every worker
    /// learned so far.
    fn identified(&mut self, host: &mut impl Host, upstream: Option<UpstreamId>) {
        if let (Some(upstream), Some(_)) = (upstream, self.config.learn) {
            self.adopt_one(host, upstream);
        }
    }

    /// Run `f` on the session of `id`, then settle it. None when `id` is not tracked.
    fn update<R>(
        &mut self,
        host: &mut impl Host,
        id: ConnectionId,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Option<R> {
        let entry = self.connections.get_mut(&id)?;
        let result = f(&mut entry.session);
        let pending = settle(&mut self.poll, &self.config, host, id, &mut entry.session);
        self.record(host, id, pending);
        Some(result)
    }

    /// The held bytes [`Worker::on_server_data`] returned could not be sent: close rather than
    /// lose them silently (they were never sent, so the client's retry is safe).
    pub fn release_failed(
        &mut self,
        host: &mut impl Host,
        id: ConnectionId,
    ) -> Option<CloseReason> {
        self.update(host, id, |s| {
            s.fail_probe();
            s.take_close()
        })
        .flatten()
    }

    /// The connection closed. `by_envoy`: Envoy closed it (tcp_proxy after Redis closed or
    /// reset, or its idle timeout); otherwise the client did.
    pub fn closed(&mut self, host: &mut impl Host, id: ConnectionId, by_envoy: bool, now: Millis) {
        self.clock = self.clock.max(now);
        self.update(host, id, |s| {
            if by_envoy {
                s.server_closed(now);
            } else {
                s.client_closed();
            }
        });
    }

    /// A host call the session relies on failed (e.g. resuming the read): passthrough.
    pub fn host_failed(&mut self, host: &mut impl Host, id: ConnectionId) {
        self.update(host, id, Session::host_failed);
    }

    /// The connection's timer fired (or a tick found it due).
    pub fn wake(&mut self, host: &mut impl Host, id: ConnectionId, now: Millis) -> Wake {
        self.clock = self.clock.max(now);
        if self.poll.carrier == Some(id) && now >= self.poll.next {
            self.poll.next = now + shared_cutoff::POLL_MS;
            self.poll_learning(host, now);
        }
        let Some(entry) = self.connections.get_mut(&id) else {
            return Wake::Nothing;
        };
        entry.session.armed = None;
        let action = entry.session.on_tick(now);
        let wake = match action {
            // A re-test of the learned cutoff idles this connection longer instead.
            TickAction::SendPing if self.start_canary(id, now) => Wake::Nothing,
            // Settled by ping_sent or ping_refused: re-arming now would arm a past deadline.
            TickAction::SendPing => return Wake::SendPing,
            TickAction::Close(reason) => Wake::Close(reason),
            TickAction::None => Wake::Nothing,
        };
        self.update(host, id, |_| ());
        wake
    }

    /// The PING [`Wake::SendPing`] asked for is on its way to Redis.
    pub fn ping_sent(&mut self, host: &mut impl Host, id: ConnectionId, now: Millis) {
        self.clock = self.clock.max(now);
        self.update(host, id, |s| s.ping_sent(now));
    }

    /// The host would not send the PING. An idle connection is then closed before it can go
    /// stale (the returned reason); a busy one is left to its own traffic.
    pub fn ping_refused(
        &mut self,
        host: &mut impl Host,
        id: ConnectionId,
        now: Millis,
    ) -> Option<CloseReason> {
        match self.update(host, id, |s| s.ping_refused(now)) {
            Some(TickAction::Close(reason)) => Some(reason),
            _ => None,
        }
    }

    /// Events taken from a session become stats, log lines and learning.
    fn record(&mut self, host: &mut impl Host, id: ConnectionId, pending: Pending) {
        let Some((upstream, events)) = pending else {
            return;
        };
        let cluster = self
            .upstreams
            .get(upstream)
            .map_or("", |u| u.cluster.as_str());
        report::events(host, id, upstream, cluster, &events);
        if self.config.learn.is_some() {
            self.learn(host, id, upstream, &events);
        }
    }
}

/// A connection's place in the spread of keepalives (`Session::spread_keepalives`), from its id
/// alone (no random number from the host): a multiplicative (Fibonacci) hash, so that ids
/// handed out in a row, as pools open connections, land far apart.
pub fn spread_of(id: ConnectionId) -> u16 {
    (id.wrapping_mul(0x9e37_79b9) >> 16) as u16
}

/// After every call that may have changed a session: re-arm its timer if its deadline moved
/// earlier, and take its events (recorded by the caller once the entry is released).
fn settle(
    poll: &mut Poll,
    config: &Config,
    host: &mut impl Host,
    id: ConnectionId,
    s: &mut Session,
) -> Pending {
    let mut deadline = s.next_deadline();
    if config.learn.is_some() {
        if poll.carrier.is_none() {
            poll.carrier = Some(id);
        }
        if poll.carrier == Some(id) {
            deadline = Some(deadline.map_or(poll.next, |d| d.min(poll.next)));
        }
    }
    arm(host, id, s, deadline);
    let events = s.take_events();
    (!events.is_empty()).then(|| (s.upstream(), events))
}

/// Look up the connection's upstream cluster (on at most [`UPSTREAM_LOOKUPS`] callbacks) and
/// put the connection on what this worker learned about it; the upstream, once identified.
fn identify(
    upstreams: &mut Upstreams,
    config: &Config,
    host: &mut impl Host,
    id: ConnectionId,
    entry: &mut Entry,
    callback: &mut impl DataCallback,
) -> Option<UpstreamId> {
    entry.lookups_left -= 1;
    let cluster = match callback.cluster() {
        Cluster::Known(cluster) => cluster,
        Cluster::NotYet => return None,
        Cluster::Unknowable => {
            log::debug!("connection {id}: no upstream cluster; global stats only");
            entry.lookups_left = 0;
            return None;
        }
    };
    entry.lookups_left = 0;
    let (upstream, new) = upstreams.register(&cluster)?;
    let learned = upstreams.interval(upstream, config.learn);
    if new {
        host.define_upstream(upstream, &cluster);
        let interval = learned.or(config.keepalive_interval).unwrap_or(0);
        let up = (upstream, cluster.as_str());
        host.upstream_record(up, UpstreamMetric::KeepaliveIntervalMs, interval);
        host.upstream_record(up, UpstreamMetric::IdleCutoffMs, 0);
    }
    host.upstream_add((upstream, &cluster), UpstreamMetric::ConnectionsOpened, 1);
    entry.session.set_upstream(upstream);
    if let Some(interval) = learned {
        entry.session.set_keepalive_interval(Some(interval));
    }
    log::debug!("connection {id} goes to upstream {cluster}");
    Some(upstream)
}

/// Ask the host to wake `id` at `deadline` if that is earlier than what is armed (a deadline
/// that moved later, the data path's common case, costs nothing: the wake finds it not due and
/// re-arms).
fn arm(host: &mut impl Host, id: ConnectionId, s: &mut Session, deadline: Option<Millis>) {
    let Some(at) = deadline else { return };
    if s.armed.is_some_and(|armed| armed <= at) {
        return;
    }
    s.armed = Some(at);
    host.arm(id, at);
}
