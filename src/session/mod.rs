//! One proxied Redis connection: what is in flight, what mode it is in, and when the filter may
//! speak on it. Sans-IO: the adapter passes in time and a [`Buffer`] view of the host's bytes.
//! The probe (`probe.rs`) and the reply pass (`reply.rs`) have files of their own.
//!
//! # When a keepalive PING may be sent
//! All of: the session follows the connection (no parse error, no MONITOR, no replication); both
//! directions are between frames; no MULTI is open; replies are on (no CLIENT REPLY OFF/SKIP);
//! and either nothing is pending, or everything pending sits behind a blocked command (its PING
//! is then answered after the blocked command's reply, and is not timed out meanwhile).

mod event;
mod modes;
mod probe;
mod reply;
mod window;

pub use event::{CloseReason, Event, PassthroughReason};

use crate::command::ReplyMode;
use crate::config::Config;
use crate::duration::Millis;
use crate::reply_queue::{Expect, ReplyQueue};
use crate::resp::{Frame, ParkedFramer, Side};
use crate::upstream::UpstreamId;
use modes::Modes;
use probe::{Probe, MAX_HELD};
use window::{frame_buffer, LoopStop, MIN_WINDOW};

/// The filter's keepalive: `PING redis-idle-guard` (the token shows in MONITOR and SLOWLOG, so
/// operators can tell the filter's PINGs from the application's).
pub const PING: &[u8] = b"*2\r\n$4\r\nPING\r\n$16\r\nredis-idle-guard\r\n";
/// PINGs that may pile up behind one blocked command (one per interval).
const MAX_PINGS_BEHIND_BLOCK: u32 = 1024;

/// The host's view of one direction's data for the current callback.
pub trait Buffer {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `len` bytes from `start` (fewer at the end). `None` if the host refused. Borrowed until
    /// the next call: the adapter may read into one reused buffer.
    fn read(&mut self, start: usize, len: usize) -> Option<&[u8]>;
    /// At least one and at most `len` bytes from `start`, as many as the host holds in one
    /// piece (a host whose buffer is a chain of slices can lend one without copying).
    fn read_some(&mut self, start: usize, len: usize) -> Option<&[u8]> {
        self.read(start, len)
    }
    /// Replace bytes `[0, upto)` with `with` (`upto == 0` prepends). False if the host refused.
    fn replace_prefix(&mut self, upto: usize, with: &[u8]) -> bool;
}

/// A TLS handshake record (content type 22, protocol major version 3) where a RESP command
/// should begin: no Redis command starts with a control byte.
fn starts_tls(buf: &mut impl Buffer) -> bool {
    matches!(buf.read(0, 2), Some([0x16, 0x03]))
}

/// A connection's keepalives come up to `1/SPREAD_DIVISOR` of the interval early, by an amount
/// fixed per connection (its spread, see [`Session::spread_keepalives`]): connections that went
/// quiet together (a burst that ended, a pool opened at once, the reconnects after a stall) drift
/// apart instead of being PINGed, and on a stall closed, in the same tick. Never later than the
/// interval: an interval chosen to beat a cutoff still does.
pub const SPREAD_DIVISOR: Millis = 5;

/// How much earlier than `interval` a connection with `spread` (0..=65535) sends its keepalive.
pub fn spread_early(interval: Millis, spread: u16) -> Millis {
    (interval / SPREAD_DIVISOR).saturating_mul(Millis::from(spread)) >> 16
}

/// Idle spells shorter than this are not reported as survived (they would cost a stat per
/// request on a busy connection, and say nothing about a cutoff worth learning).
pub const MIN_REPORTED_SPELL: Millis = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickAction {
    None,
    /// Append [`PING`] to the connection's (paused) read buffer and continue it, then call
    /// [`Session::ping_sent`] or [`Session::ping_refused`].
    SendPing,
    /// Close the client connection; the event is already recorded.
    Close(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// Both directions framed and understood.
    Active,
    /// On its way to passthrough: requests are no longer followed; replies are, only until
    /// the filter's own are removed.
    Draining,
    /// Passthrough: the filter stops following the connection and passes its bytes through
    /// untouched; it does nothing more on it.
    Passthrough,
}

pub struct Session {
    keepalive_interval: Option<Millis>,
    /// This connection's place in the spread of keepalives (0: none).
    spread: u16,
    /// The quiet time after which its keepalive is due: the interval, less its spread.
    keepalive_after: Option<Millis>,
    /// The upstream (cluster) this connection goes to, as the adapter numbers them; 0 = not
    /// known yet.
    upstream: UpstreamId,
    /// The idle spell before the first bytes sent after silence, until Redis answers.
    spell: Option<Millis>,
    ping_timeout: Millis,
    probe_after: Option<Millis>,
    /// Last byte from Redis (or the connection's start): the link's last proof of life.
    last_server: Millis,
    /// A client command held behind the probe's PING.
    probe: Option<Probe>,
    /// The client has sent a byte (so Envoy can keep its read buffer paused for us).
    client_seen: bool,
    /// The host can send a PING before the client's first byte (see `Host`).
    sends_before_client_bytes: bool,
    /// Held bytes to put back on the wire now (probe answered, or passthrough).
    release: Option<Vec<u8>>,
    /// A close the adapter must carry out after a data callback.
    close_now: Option<CloseReason>,
    /// Parked between frames: an idle connection holds two offsets, not two framers.
    requests: ParkedFramer,
    replies: ParkedFramer,
    modes: Modes,
    follow: Follow,
    closed: bool,
    /// The client sent its FIN.
    client_gone: bool,
    /// Redis has sent at least one byte: the link was up.
    server_seen: bool,
    /// Last byte seen in either direction, the filter's own included.
    last_activity: Millis,
    /// A keepalive was due but not allowed; look again at this time.
    recheck_at: Millis,
    /// Since when the front filter PING has been owed an answer (None: none at the front).
    ping_clock: Option<Millis>,
    /// End offset of the last complete reply frame (start of the partial one, if any).
    reply_frame_end: u64,
    /// Head of a possibly-filter reply cut from the previous read.
    carry: Vec<u8>,
    req_window: usize,
    rep_window: usize,
    events: Vec<Event>,
    /// The deadline the adapter's schedule holds for this connection (its copy, see
    /// `Schedule::arm_cached`): kept here so that a data callback need not look it up.
    pub armed: Option<Millis>,
}

impl Session {
    pub fn new(config: &Config, now: Millis) -> Session {
        Session {
            keepalive_interval: config.keepalive_interval,
            spread: 0,
            keepalive_after: config.keepalive_interval,
            upstream: 0,
            spell: None,
            ping_timeout: config.ping_timeout,
            probe_after: config.probe_after,
            last_server: now,
            probe: None,
            client_seen: false,
            sends_before_client_bytes: false,
            release: None,
            close_now: None,
            requests: ParkedFramer::new(Side::Request),
            replies: ParkedFramer::new(Side::Reply),
            modes: Modes {
                queue: ReplyQueue::default(),
                resp3: false,
                in_multi: false,
                reply_mode: ReplyMode::On,
                subscribed: false,
                pass_through: None,
                quitting: false,
            },
            follow: Follow::Active,
            closed: false,
            client_gone: false,
            server_seen: false,
            last_activity: now,
            recheck_at: 0,
            ping_clock: None,
            reply_frame_end: 0,
            carry: Vec::new(),
            req_window: MIN_WINDOW,
            rep_window: MIN_WINDOW,
            events: Vec::new(),
            armed: None,
        }
    }

    pub fn upstream(&self) -> UpstreamId {
        self.upstream
    }

    pub fn set_upstream(&mut self, upstream: UpstreamId) {
        self.upstream = upstream;
    }

    pub fn keepalive_interval(&self) -> Option<Millis> {
        self.keepalive_interval
    }

    /// A learned interval for this connection's upstream. The caller re-arms its timer.
    pub fn set_keepalive_interval(&mut self, interval: Option<Millis>) {
        self.keepalive_interval = interval;
        self.keepalive_after = interval.map(|i| i.saturating_sub(spread_early(i, self.spread)));
    }

    /// Send keepalives up to a fifth of the interval early, by `spread`/65536 of that fifth
    /// (see [`SPREAD_DIVISOR`]). The caller re-arms its timer.
    pub fn spread_keepalives(&mut self, spread: u16) {
        self.spread = spread;
        self.set_keepalive_interval(self.keepalive_interval);
    }

    /// A different `probe_after` for this connection (a re-test's canary probes sooner).
    pub fn set_probe_after(&mut self, after: Option<Millis>) {
        self.probe_after = after;
    }

    /// Whether the host can send a PING before the client's first byte: if not, such a
    /// connection is left to the probe of its first command.
    pub fn set_sends_before_client_bytes(&mut self, can: bool) {
        self.sends_before_client_bytes = can;
    }

    /// Nothing owed either way and nothing held: the connection is between uses.
    pub fn is_idle(&self) -> bool {
        self.modes.queue.is_empty()
            && self.probe.is_none()
            && self.requests.at_boundary()
            && self.replies.at_boundary()
            && !self.closed
    }

    /// The link died: report the idle spell it died after.
    fn record_death(&mut self, now: Millis) {
        let idle_ms = self
            .spell
            .take()
            .unwrap_or_else(|| now.saturating_sub(self.last_activity));
        self.events.push(Event::IdleDeath { idle_ms });
    }

    /// Events since the last call, for metrics and logs.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// True once the client's bytes pass through untouched (passthrough, on its way there, or
    /// closed): the filter no longer needs to see them, nor keep the read buffer paused.
    pub fn passes_requests_through(&self) -> bool {
        self.follow != Follow::Active || self.closed
    }

    /// Passthrough: the filter stops following this connection and passes its bytes through
    /// untouched.
    pub fn is_passthrough(&self) -> bool {
        self.follow == Follow::Passthrough
    }

    /// Go to passthrough, once the filter's own replies still owed are removed (`Draining`).
    fn pass_through(&mut self, why: PassthroughReason) {
        if self.follow == Follow::Passthrough {
            return;
        }
        self.events.push(Event::Passthrough(why));
        self.release_held();
        self.follow = if self.modes.queue.filter_pending() > 0 {
            Follow::Draining
        } else {
            Follow::Passthrough
        };
        self.ping_clock = None;
    }

    /// Go to passthrough at once, from the reply side itself: no more reply framing is possible.
    fn pass_through_now(&mut self, why: PassthroughReason) {
        if self.follow != Follow::Passthrough {
            self.events.push(Event::Passthrough(why));
        }
        self.release_held();
        self.follow = Follow::Passthrough;
        self.ping_clock = None;
    }

    /// A client read that lies wholly inside a payload the framer is skipping (a large value
    /// arriving in several reads): no frame ends in it, and nothing can be sent before its
    /// frame ends, so the filter needs neither the bytes, nor the time, nor a paused buffer.
    /// Consumes it and returns true; false means: call [`Session::on_client_data`].
    pub fn skip_client_payload(&mut self, len: usize) -> bool {
        if len == 0
            || self.follow != Follow::Active
            || self.closed
            || self.client_gone
            || self.probe.is_some()
            || self.release.is_some()
            || len as u64 > self.requests.skippable()
        {
            return false;
        }
        self.requests.skip(len as u64);
        true
    }

    /// The same for a read of Redis's inside a reply payload (never one of the filter's own
    /// replies, which are short and framed whole).
    pub fn skip_server_payload(&mut self, len: usize) -> bool {
        if len == 0
            || self.follow == Follow::Passthrough
            || !self.carry.is_empty()
            || self.probe.is_some()
            || len as u64 > self.replies.skippable()
        {
            return false;
        }
        self.replies.skip(len as u64);
        true
    }

    /// Client bytes, on their way to Redis. They are never changed, but they may be held back
    /// (probe before stale reuse) and put back on the wire, in order, after the probe.
    pub fn on_client_data(&mut self, now: Millis, buf: &mut impl Buffer) {
        if !buf.is_empty() {
            let idle = now.saturating_sub(self.last_activity);
            if idle >= MIN_REPORTED_SPELL && self.spell.is_none() && self.modes.queue.is_empty() {
                self.spell = Some(idle);
            }
            self.last_activity = now;
        }
        if self.follow != Follow::Active || self.closed {
            return;
        }
        if !buf.is_empty() && !self.client_seen {
            self.client_seen = true;
            if starts_tls(buf) {
                self.pass_through(PassthroughReason::Tls);
                return;
            }
        }
        let fresh = self.probe.is_none() && !buf.is_empty() && buf.len() <= MAX_HELD;
        let start_probe = fresh && self.probe_due(now);
        // A keepalive still unanswered holds the command like a probe (its answer releases it;
        // its silence closes the connection with the command never sent).
        let behind_ping = fresh && !start_probe && self.keepalive_unanswered();
        let modes = &mut self.modes;
        let mut sink = |f: &Frame| modes.on_command(f);
        let window = &mut self.req_window;
        let result = self
            .requests
            .with(|f| frame_buffer(f, buf, 0, window, &mut sink));
        if let Some(why) = self.modes.pass_through.take() {
            self.pass_through(why);
        }
        match result {
            Ok(()) => {}
            Err(LoopStop::Parse(e)) => self.pass_through(PassthroughReason::RequestParse(e)),
            Err(LoopStop::HostRead) => self.pass_through(PassthroughReason::HostRefused),
        }
        if self.client_gone {
            // The client half-closed: its FIN goes on now, so what is held must go before it.
            self.release_held();
        }
        let holding = self.probe.as_ref().is_some_and(|p| p.holding);
        if self.follow == Follow::Active && (holding || start_probe || behind_ping) {
            self.hold(now, buf, start_probe, behind_ping);
        }
        // Held bytes to put back: in this callback the read buffer is ours to write, and they
        // go in front of whatever the client sent since.
        if let Some(held) = self.release.take() {
            if !buf.replace_prefix(0, &held) {
                self.fail_probe();
            }
        }
    }

    /// A close the adapter must carry out now.
    pub fn take_close(&mut self) -> Option<CloseReason> {
        self.close_now.take()
    }

    fn may_ping(&self) -> bool {
        let q = &self.modes.queue;
        self.follow == Follow::Active
            && !self.closed
            && !self.client_gone
            && self.requests.at_boundary()
            && self.replies.at_boundary()
            && self.carry.is_empty()
            && !self.modes.in_multi
            && self.modes.reply_mode == ReplyMode::On
            && (q.is_empty()
                || (q.only_behind_blocking() && q.filter_pending() < MAX_PINGS_BEHIND_BLOCK))
    }

    /// When [`Session::on_tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        if self.closed || self.follow == Follow::Passthrough {
            return None;
        }
        let timeout = self.ping_clock.map(|t| t + self.ping_timeout);
        let keepalive = match self.keepalive_after {
            Some(i) if self.follow == Follow::Active => {
                Some((self.last_activity + i).max(self.recheck_at))
            }
            _ => None,
        };
        match (timeout, keepalive) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn on_tick(&mut self, now: Millis) -> TickAction {
        if self.closed || self.follow == Follow::Passthrough {
            return TickAction::None;
        }
        if let Some(action) = self.probe_tick(now) {
            return action;
        }
        if let Some(since) = self.ping_clock {
            if now >= since + self.ping_timeout && self.modes.queue.client_pending() {
                // A client command waits behind the unanswered PING. If Redis is only slow,
                // closing would lose its reply; if the link is dead, the command is lost either
                // way and the client's own timeout reports it. Count the failure, keep waiting.
                self.ping_clock = None;
                self.events.push(Event::KeepaliveFailed);
                self.events.push(Event::BusyDeath);
                return TickAction::None;
            }
            if now >= since + self.ping_timeout {
                self.closed = true;
                self.events.push(Event::KeepaliveFailed);
                self.record_death(now);
                self.events
                    .push(Event::ReconnectSignal(CloseReason::PingTimeout));
                return TickAction::Close(CloseReason::PingTimeout);
            }
        }
        let Some(interval) = self.keepalive_after else {
            return TickAction::None;
        };
        if self.follow != Follow::Active
            || now < self.last_activity + interval
            || now < self.recheck_at
        {
            return TickAction::None;
        }
        if !self.client_seen && !self.sends_before_client_bytes && self.probe_after.is_some() {
            // No byte from the client yet, so Envoy holds no paused read buffer to carry a
            // PING. Its first command will be probed if the link has been silent that long:
            // nothing to do, and no reason to close a connection a pool opened ahead of use.
            self.recheck_at = now + interval;
            return TickAction::None;
        }
        if self.may_ping() {
            TickAction::SendPing
        } else {
            self.recheck_at = now + interval;
            TickAction::None
        }
    }

    /// The adapter put [`PING`] on the wire.
    pub fn ping_sent(&mut self, now: Millis) {
        let idle_ms = now.saturating_sub(self.last_activity);
        self.events.push(Event::KeepaliveSent { idle_ms });
        if self.modes.queue.is_empty() && self.spell.is_none() {
            self.spell = Some(idle_ms);
        }
        self.modes.queue.push(Expect::Filter);
        if self.modes.queue.filter_at_front() {
            self.ping_clock = Some(now);
        }
        self.last_activity = now;
    }

    /// The host refused the injection. An idle connection is closed now, before it can go
    /// stale; a busy one is left alone (its own traffic keeps it alive).
    pub fn ping_refused(&mut self, now: Millis) -> TickAction {
        self.events.push(Event::KeepaliveRefused);
        if self.modes.queue.client_pending() {
            self.recheck_at = now + self.keepalive_after.unwrap_or(self.ping_timeout);
            return TickAction::None;
        }
        self.closed = true;
        self.events
            .push(Event::ReconnectSignal(CloseReason::InjectionRefused));
        TickAction::Close(CloseReason::InjectionRefused)
    }

    /// Redis's side closed. Returns true when the client was idle: closing it now is a clean
    /// reconnect signal (no command of its is lost).
    pub fn server_closed(&mut self, now: Millis) -> bool {
        if self.closed {
            return false;
        }
        self.closed = true;
        if self.follow != Follow::Active {
            // Passthrough: whether the client was idle is not known (a TLS session's
            // close_notify, a MONITOR, junk). Neither a death to learn from nor a signal.
            return false;
        }
        if self.probe.take().is_some() {
            // The held command was never sent: the client's retry is safe.
            self.events.push(Event::ProbeFailed);
            self.record_death(now);
            return false;
        }
        // Never up (Envoy could not connect to Redis): a failed connect, not a dead link.
        if !self.server_seen || self.client_gone || self.modes.quitting {
            return false;
        }
        if self.modes.queue.client_pending() || !self.requests.at_boundary() {
            self.events.push(Event::BusyDeath);
            return false;
        }
        self.record_death(now);
        self.events
            .push(Event::ReconnectSignal(CloseReason::ServerClosed));
        true
    }

    /// The client closed its side (its FIN reached the filter). Redis's close that follows is
    /// the client's doing, not a dead link.
    pub fn client_closed(&mut self) {
        self.client_gone = true;
    }

    /// The host failed a call the session relies on (e.g. resuming the read): passthrough.
    pub fn host_failed(&mut self) {
        self.pass_through(PassthroughReason::HostRefused);
    }
}
