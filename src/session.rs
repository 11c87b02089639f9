//! One proxied Redis connection: what is in flight, what mode it is in, and when the filter may
//! speak on it. Sans-IO: the adapter passes in time and a [`Buffer`] view of the host's bytes.
//!
//! # When a keepalive PING may be sent
//! All of: the session follows the connection (no parse error, no MONITOR, no replication); both
//! directions are between frames; no MULTI is open; replies are on (no CLIENT REPLY OFF/SKIP);
//! and either nothing is pending, or everything pending sits behind a blocked command (its PING
//! is then answered after the blocked command's reply, and is not timed out meanwhile).
//!
//! # How its reply is recognised and removed
//! The PING carries a token, `PING redis-idle-guard`. The reply queue knows, in wire order,
//! whose each reply is; pushes (`>`) and, on a RESP2 subscribed connection, pubsub-shaped arrays
//! (`message`, `subscribe`, …) are out of band and never take a place in it. A reply in a
//! filter place is removed only if it is exactly `$16\r\nredis-idle-guard\r\n` (RESP2 subscribed:
//! `*2 $4 pong $16 redis-idle-guard`) or an error (`-NOAUTH`, `-LOADING`…); anything else means
//! we lost track, and the filter steps aside rather than guess. A filter reply split across
//! reads is cut from the first read and held (it is at most a few dozen bytes), and put back
//! at the front of the next read if it turns out not to be ours.

use crate::command::{Command, ReplyMode};
use crate::config::Config;
use crate::duration::Millis;
use crate::probe::{Probe, MAX_HELD};
use crate::reply_queue::{Expect, ReplyQueue};
use crate::resp::{Frame, FrameKind, Framer, ParkedFramer, RespError, Side};

/// The filter's keepalive: `PING redis-idle-guard` (the token shows in MONITOR and SLOWLOG, so
/// operators can tell the filter's PINGs from the application's).
pub const PING: &[u8] = b"*2\r\n$4\r\nPING\r\n$16\r\nredis-idle-guard\r\n";
const PONG_BULK: &[u8] = b"$16\r\nredis-idle-guard\r\n";
/// What a RESP2 connection in subscribed mode answers instead. Either shape is accepted in a
/// filter place: after the last UNSUBSCRIBE, Redis answers with the bulk form again.
const PONG_RESP2_PUBSUB: &[u8] = b"*2\r\n$4\r\npong\r\n$16\r\nredis-idle-guard\r\n";

fn is_filter_reply(bytes: &[u8]) -> bool {
    bytes == PONG_BULK || bytes == PONG_RESP2_PUBSUB
}

/// The first bytes of a reply that may still turn out to be the filter's.
fn may_be_filter_reply(head: &[u8]) -> bool {
    PONG_BULK.starts_with(head)
        || PONG_RESP2_PUBSUB.starts_with(head)
        || matches!(head.first(), Some(b'-' | b'!'))
}
/// An error answering our PING (NOAUTH, LOADING, MASTERDOWN…) is short; longer is not ours.
const MAX_OWN_REPLY: usize = 512;
/// PINGs that may pile up behind one blocked command (one per interval).
const MAX_PINGS_BEHIND_BLOCK: u32 = 1024;
const MIN_WINDOW: usize = 256;
const MAX_WINDOW: usize = 16 * 1024;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The filter's PING went unanswered for `ping_timeout`.
    PingTimeout,
    /// The host would not let the filter send its PING; closing an idle connection before it
    /// can go stale is the fallback.
    InjectionRefused,
    /// Redis (or the path) closed the connection while the client was idle.
    UpstreamClosed,
    /// The probe's PING went unanswered (or could not be followed by the held command): the
    /// held command was never sent.
    ProbeFailed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepAside {
    RequestParse(RespError),
    ReplyParse(RespError),
    /// A reply arrived that no request accounts for, or a filter place held something else.
    LostTrack(&'static str),
    Monitor,
    Replication,
    /// A mode change queued inside MULTI (CLIENT REPLY, HELLO, SUBSCRIBE…): we do not model it.
    ModeChangeInMulti,
    HostRefused,
    /// The client's first bytes are a TLS record: the session is encrypted end to end, and
    /// the filter sees no RESP (TLS must be originated by Envoy for the filter to work).
    Tls,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    KeepaliveSent {
        idle_ms: Millis,
    },
    KeepaliveAnswered,
    KeepaliveFailed,
    KeepaliveRefused,
    ReconnectSignal(CloseReason),
    Passthrough(StepAside),
    /// A client command is held while the probe's PING goes first.
    ProbeHeld,
    /// The probe was answered; the held command went on after `waited_ms`.
    ProbePassed {
        waited_ms: Millis,
    },
    /// The probe failed; the held command was never sent.
    ProbeFailed,
    /// The first bytes sent after `idle_ms` of silence were answered: the path survived it.
    IdleSurvived {
        idle_ms: Millis,
    },
    /// The link died after `idle_ms` of silence (PING or probe unanswered, Redis closed or
    /// reset while the client was idle).
    IdleDeath {
        idle_ms: Millis,
    },
    /// The link died (or stopped answering) while a reply was owed to the client: whatever
    /// killed it did not wait for the connection to be idle, so it was an event, not an idle
    /// cutoff (see `idle_cutoff`).
    BusyDeath,
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
    /// Requests are no longer followed; replies are, only until the filter's own are removed.
    Draining,
    /// The filter does nothing more on this connection.
    Detached,
}

/// What the request side knows about the connection's mode.
#[derive(Debug)]
struct Modes {
    queue: ReplyQueue,
    resp3: bool,
    in_multi: bool,
    reply_mode: ReplyMode,
    /// Ever subscribed: on RESP2, pubsub-shaped arrays are then pushes, not replies.
    subscribed: bool,
    /// Set when a request makes us stop following; applied after the frame loop.
    step_aside: Option<StepAside>,
    /// The client sent QUIT: the close that follows is not a reconnect signal.
    quitting: bool,
}

impl Modes {
    fn on_command(&mut self, frame: &Frame) {
        if self.step_aside.is_some() || frame.kind != FrameKind::Command {
            return;
        }
        let cmd = Command::classify(&frame.capture, self.in_multi);
        if self.in_multi {
            match cmd {
                Command::EndMulti => {
                    self.in_multi = false;
                    self.queue.push(Expect::Client);
                }
                Command::Plain | Command::Multi | Command::Blocking => {
                    self.queue.push(Expect::Client)
                }
                _ => self.step_aside = Some(StepAside::ModeChangeInMulti),
            }
            return;
        }
        // CLIENT REPLY, as Redis applies it (networking.c, clientCommand): SKIP turns into
        // "skip this one" when the next command starts; ON always answers.
        let skipping_this = self.reply_mode == ReplyMode::Skip;
        if skipping_this {
            self.reply_mode = ReplyMode::On;
        }
        let replies = match cmd {
            Command::ClientReply(ReplyMode::On) => {
                self.reply_mode = ReplyMode::On;
                true
            }
            Command::ClientReply(ReplyMode::Off) => {
                self.reply_mode = ReplyMode::Off;
                false
            }
            Command::ClientReply(ReplyMode::Skip) => {
                if self.reply_mode != ReplyMode::Off {
                    self.reply_mode = ReplyMode::Skip;
                }
                false
            }
            _ => self.reply_mode == ReplyMode::On && !skipping_this,
        };
        match cmd {
            // Confirmations are pushes (RESP3) or pubsub arrays (RESP2): never queued replies.
            Command::Pubsub => self.subscribed = true,
            Command::Monitor => self.step_aside = Some(StepAside::Monitor),
            Command::Replication => self.step_aside = Some(StepAside::Replication),
            Command::Quit => {
                self.quitting = true;
                if replies {
                    self.queue.push(Expect::Client);
                }
            }
            _ if !replies => {}
            Command::Blocking => self.queue.push(Expect::ClientBlocking),
            Command::Multi => {
                self.in_multi = true;
                self.queue.push(Expect::Client);
            }
            Command::Hello(Some(v @ (2 | 3))) => self.queue.push(Expect::ClientHello(v)),
            Command::Reset => {
                self.reply_mode = ReplyMode::On;
                self.queue.push(Expect::ClientReset);
            }
            _ => self.queue.push(Expect::Client),
        }
    }
}

fn is_pubsub_array(frame: &Frame) -> bool {
    const KINDS: &[&[u8]] = &[
        b"message",
        b"pmessage",
        b"smessage",
        b"subscribe",
        b"psubscribe",
        b"ssubscribe",
        b"unsubscribe",
        b"punsubscribe",
        b"sunsubscribe",
    ];
    frame.kind == FrameKind::Aggregate
        && matches!(frame.capture.count(), 3 | 4)
        && frame
            .capture
            .item(0)
            .is_some_and(|w| KINDS.iter().any(|k| w.eq_ignore_ascii_case(k)))
}

/// What the reply loop decided about each complete frame of one read.
struct ReplyPass<'a> {
    modes: &'a mut Modes,
    follow: &'a mut Follow,
    /// Complete filter replies in this read, as stream offsets, to verify and remove.
    ours: Vec<(u64, u64, bool)>,
    lost: Option<&'static str>,
    last_end: &'a mut u64,
}

impl ReplyPass<'_> {
    fn on_reply(&mut self, frame: &Frame) {
        *self.last_end = frame.end;
        if *self.follow == Follow::Detached || self.lost.is_some() {
            return;
        }
        if *self.follow == Follow::Draining && self.modes.queue.filter_pending() == 0 {
            *self.follow = Follow::Detached;
            return;
        }
        if frame.kind == FrameKind::Push
            || (!self.modes.resp3 && self.modes.subscribed && is_pubsub_array(frame))
        {
            return;
        }
        match self.modes.queue.pop() {
            None => self.lost = Some("a reply no request accounts for"),
            Some(Expect::Client | Expect::ClientBlocking) => {}
            Some(Expect::ClientHello(v)) => {
                if frame.kind != FrameKind::Error {
                    self.modes.resp3 = v == 3;
                }
            }
            Some(Expect::ClientReset) => {
                if frame.kind != FrameKind::Error {
                    self.modes.resp3 = false;
                    self.modes.subscribed = false;
                    self.modes.in_multi = false;
                }
            }
            Some(Expect::Filter) => {
                self.ours
                    .push((frame.start, frame.end, frame.kind == FrameKind::Error))
            }
        }
    }
}

pub struct Session {
    keepalive_interval: Option<Millis>,
    /// This connection's place in the spread of keepalives (0: none).
    spread: u16,
    /// The quiet time after which its keepalive is due: the interval, less its spread.
    keepalive_after: Option<Millis>,
    /// The upstream (cluster) this connection goes to, as the adapter numbers them; 0 = not
    /// known yet.
    upstream: u16,
    /// The idle spell before the first bytes sent after silence, until Redis answers.
    spell: Option<Millis>,
    ping_timeout: Millis,
    probe_after: Option<Millis>,
    /// Last byte from Redis (or the connection's start): the link's last proof of life.
    last_upstream: Millis,
    /// A client command held behind the probe's PING.
    probe: Option<Probe>,
    /// The client has sent a byte (so Envoy can keep its read buffer paused for us).
    client_seen: bool,
    /// The host can send a PING before the client's first byte (see `Host`).
    sends_before_client_bytes: bool,
    /// Held bytes to put back on the wire now (probe answered, or the filter stepped aside).
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
    upstream_seen: bool,
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

enum LoopStop {
    Parse(RespError),
    HostRead,
}

/// Frame `buf[from..]`, fetching only header windows from the host and skipping payloads.
fn frame_buffer(
    framer: &mut Framer,
    buf: &mut impl Buffer,
    from: usize,
    window: &mut usize,
    sink: &mut dyn FnMut(&Frame),
) -> Result<(), LoopStop> {
    let size = buf.len();
    let mut pos = from;
    while pos < size {
        let skippable = framer.skippable();
        if skippable > 0 {
            let k = skippable.min((size - pos) as u64);
            framer.skip(k);
            pos += k as usize;
            // A large payload: keep the next header windows small.
            *window = MIN_WINDOW;
            continue;
        }
        let n = (*window).min(size - pos);
        let Some(bytes) = buf.read_some(pos, n) else {
            return Err(LoopStop::HostRead);
        };
        if bytes.is_empty() || bytes.len() > n {
            return Err(LoopStop::HostRead);
        }
        framer.feed(bytes, sink).map_err(LoopStop::Parse)?;
        pos += bytes.len();
        // Many small frames: fewer, larger reads.
        *window = (*window * 2).min(MAX_WINDOW);
    }
    Ok(())
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
            last_upstream: now,
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
                step_aside: None,
                quitting: false,
            },
            follow: Follow::Active,
            closed: false,
            client_gone: false,
            upstream_seen: false,
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

    pub fn upstream(&self) -> u16 {
        self.upstream
    }

    pub fn set_upstream(&mut self, upstream: u16) {
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

    /// True once the filter no longer needs to see this connection's client bytes, nor keep
    /// its read buffer paused.
    pub fn requests_unfollowed(&self) -> bool {
        self.follow != Follow::Active || self.closed
    }

    pub fn is_detached(&self) -> bool {
        self.follow == Follow::Detached
    }

    fn step_aside(&mut self, why: StepAside) {
        if self.follow == Follow::Detached {
            return;
        }
        self.events.push(Event::Passthrough(why));
        self.release_held();
        self.follow = if self.modes.queue.filter_pending() > 0 {
            Follow::Draining
        } else {
            Follow::Detached
        };
        self.ping_clock = None;
    }

    /// Stepping aside on the reply side itself: no more reply framing is possible.
    fn detach(&mut self, why: StepAside) {
        if self.follow != Follow::Detached {
            self.events.push(Event::Passthrough(why));
        }
        self.release_held();
        self.follow = Follow::Detached;
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
            || self.follow == Follow::Detached
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
                self.step_aside(StepAside::Tls);
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
        if let Some(why) = self.modes.step_aside.take() {
            self.step_aside(why);
        }
        match result {
            Ok(()) => {}
            Err(LoopStop::Parse(e)) => self.step_aside(StepAside::RequestParse(e)),
            Err(LoopStop::HostRead) => self.step_aside(StepAside::HostRefused),
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

    /// Whether a command arriving now must wait for a probe: the link has been silent for
    /// `probe_after` and the filter may speak (same rules as for a keepalive, nothing pending).
    fn probe_due(&self, now: Millis) -> bool {
        let Some(after) = self.probe_after else {
            return false;
        };
        now.saturating_sub(self.last_upstream) >= after
            && !self.client_gone
            && self.modes.queue.is_empty()
            && self.requests.at_boundary()
            && self.may_ping()
    }

    /// The client is idle and the filter's keepalive, at the front, is still unanswered.
    fn keepalive_unanswered(&self) -> bool {
        let q = &self.modes.queue;
        self.ping_clock.is_some()
            && q.filter_at_front()
            && !q.client_pending()
            && self.requests.at_boundary()
            && !self.client_gone
            && self.follow == Follow::Active
            && !self.closed
    }

    /// Move this read's bytes into the hold. On the first, either put the probe's PING in their
    /// place (`start`), or hold them behind the keepalive already out (`behind_ping`).
    fn hold(&mut self, now: Millis, buf: &mut impl Buffer, start: bool, behind_ping: bool) {
        let len = buf.len();
        let bytes = if len == 0 {
            Some(Vec::new())
        } else {
            buf.read(0, len)
                .filter(|b| b.len() == len)
                .map(<[u8]>::to_vec)
        };
        let Some(bytes) = bytes else {
            // Nothing was moved yet: the bytes stay where they are, held ones go before them.
            self.step_aside(StepAside::HostRefused);
            return;
        };
        let replacement: &[u8] = if start { PING } else { b"" };
        if (len > 0 || start) && !buf.replace_prefix(len, replacement) {
            self.step_aside(StepAside::HostRefused);
            return;
        }
        if start {
            if self.spell.is_none() {
                self.spell = Some(now.saturating_sub(self.last_upstream));
            }
            // The PING goes out ahead of the client bytes just framed.
            self.modes.queue.push_front(Expect::Filter);
            self.ping_clock = Some(now);
            self.probe = Some(Probe {
                held: bytes,
                since: now,
                holding: true,
                own_ping: true,
            });
            self.events.push(Event::ProbeHeld);
            return;
        }
        if behind_ping {
            // Not a probe of its own (no PING of its own): counted only if the command is then
            // never sent (probe.failed).
            self.probe = Some(Probe {
                held: bytes,
                since: self.ping_clock.unwrap_or(now),
                holding: true,
                own_ping: false,
            });
            return;
        }
        let overflow = match self.probe.as_mut() {
            Some(p) => {
                p.held.extend_from_slice(&bytes);
                p.held.len() > MAX_HELD
            }
            None => false,
        };
        if overflow {
            // Too much to hold: let it all follow the PING now (order is kept).
            self.release_held();
        }
    }

    /// Stop holding: the held bytes go back on the wire at the next chance. The probe's PING
    /// is still out; its answer (or silence) still decides the probe.
    fn release_held(&mut self) {
        if let Some(p) = self.probe.as_mut().filter(|p| p.holding) {
            p.holding = false;
            let held = std::mem::take(&mut p.held);
            self.release
                .get_or_insert_with(Vec::new)
                .extend_from_slice(&held);
        }
    }

    /// Held bytes the adapter must append to the paused read buffer (outside the client's own
    /// callback) and continue.
    pub fn take_release(&mut self) -> Option<Vec<u8>> {
        self.release.take().filter(|b| !b.is_empty())
    }

    /// A close the adapter must carry out now.
    pub fn take_close(&mut self) -> Option<CloseReason> {
        self.close_now.take()
    }

    /// The held bytes could not be put back: close rather than lose them silently. They were
    /// never sent, so the client's retry on a new connection is safe.
    pub fn fail_probe(&mut self) {
        self.probe = None;
        self.release = None;
        if !self.closed {
            self.closed = true;
            self.events.push(Event::ProbeFailed);
            self.close_now = Some(CloseReason::ProbeFailed);
        }
    }

    /// A time to use for Redis bytes arriving now, instead of reading the clock: the last
    /// activity, while only prompt client replies are owed (no PING of the filter's, no probe,
    /// no blocked command, no idle spell being measured). It is never later than the real time
    /// and behind it by the reply's latency, which errs on the safe side: a keepalive a little
    /// early, a probe a little eager. None: read the clock.
    pub fn reply_time_hint(&self) -> Option<Millis> {
        let q = &self.modes.queue;
        (self.follow == Follow::Active
            && !self.closed
            && self.probe.is_none()
            && self.spell.is_none()
            && self.carry.is_empty()
            && q.front() == Some(Expect::Client)
            && q.filter_pending() == 0)
            .then_some(self.last_activity)
    }

    /// Redis bytes, on their way to the client: the filter's own replies are cut out here.
    pub fn on_server_data(&mut self, now: Millis, buf: &mut impl Buffer) {
        if !buf.is_empty() || !self.carry.is_empty() {
            if let Some(idle_ms) = self.spell.take() {
                self.events.push(Event::IdleSurvived { idle_ms });
            }
            self.last_activity = now;
            self.last_upstream = now;
            self.upstream_seen = true;
        }
        if self.follow == Follow::Detached {
            return;
        }
        // Put back the held head of a frame, in front of the bytes that follow it.
        let carried = std::mem::take(&mut self.carry);
        if !carried.is_empty() && !buf.replace_prefix(0, &carried) {
            self.detach(StepAside::HostRefused);
            return;
        }
        let base = self.replies.offset().saturating_sub(carried.len() as u64);
        let filter_before = self.modes.queue.filter_pending();

        let mut pass = ReplyPass {
            modes: &mut self.modes,
            follow: &mut self.follow,
            ours: Vec::new(),
            lost: None,
            last_end: &mut self.reply_frame_end,
        };
        let window = &mut self.rep_window;
        let from = carried.len();
        let result = self
            .replies
            .with(|f| frame_buffer(f, buf, from, window, &mut |fr| pass.on_reply(fr)));
        let ReplyPass { ours, lost, .. } = pass;

        // Verify each filter reply and collect what to cut, in buffer positions.
        let mut cuts: Vec<(usize, usize)> = Vec::new();
        let mut lost = lost;
        let first_answer = self.events.len();
        for (start, end, is_error) in ours {
            let (Some(s), Some(e)) = (start.checked_sub(base), end.checked_sub(base)) else {
                lost.get_or_insert("a filter reply began in a read already passed on");
                break;
            };
            let (s, e) = (s as usize, e as usize);
            let genuine = is_error
                || (e - s <= PONG_RESP2_PUBSUB.len()
                    && buf.read(s, e - s).is_some_and(is_filter_reply));
            if !genuine {
                lost.get_or_insert("a filter place held a reply that is not the filter's");
                break;
            }
            cuts.push((s, e));
            self.events.push(Event::KeepaliveAnswered);
        }
        let answered = cuts.len() as u32;

        match result {
            Ok(()) => {}
            Err(LoopStop::Parse(e)) => {
                self.apply_cuts(buf, &cuts);
                self.detach(StepAside::ReplyParse(e));
                return;
            }
            Err(LoopStop::HostRead) => {
                self.detach(StepAside::HostRefused);
                return;
            }
        }
        if let Some(why) = lost {
            self.apply_cuts(buf, &cuts);
            self.detach(StepAside::LostTrack(why));
            return;
        }

        // A partial frame at the end that may be the filter's: hold its head back.
        if !self.replies.at_boundary()
            && self.follow != Follow::Detached
            && self.modes.queue.filter_at_front()
        {
            if let Some(s) = self.reply_frame_end.checked_sub(base) {
                let s = s as usize;
                let size = buf.len();
                if size > s && size - s <= MAX_OWN_REPLY {
                    let head = buf
                        .read(s, size - s)
                        .filter(|h| h.len() == size - s && may_be_filter_reply(h));
                    if let Some(head) = head {
                        self.carry = head.to_vec();
                        cuts.push((s, size));
                    }
                }
            }
        }
        if !self.apply_cuts(buf, &cuts) {
            self.carry.clear();
            self.detach(StepAside::HostRefused);
            return;
        }
        // The probe's PING was the first filter reply owed: its answer releases the hold.
        if answered > 0 {
            if let Some(p) = self.probe.take() {
                // A probe's own PING is counted as the probe's; a command held behind a
                // keepalive just follows it (the keepalive's answer is counted as such).
                if p.own_ping {
                    if self.events.get(first_answer) == Some(&Event::KeepaliveAnswered) {
                        self.events.remove(first_answer);
                    }
                    self.events.push(Event::ProbePassed {
                        waited_ms: now.saturating_sub(p.since),
                    });
                }
                if !p.held.is_empty() {
                    self.release
                        .get_or_insert_with(Vec::new)
                        .extend_from_slice(&p.held);
                }
            }
        }

        // The ping clock follows whichever filter PING is now at the front.
        let front = self.modes.queue.filter_at_front();
        if answered > 0 || filter_before != self.modes.queue.filter_pending() || !front {
            self.ping_clock = front.then_some(now);
        } else if self.ping_clock.is_none() {
            // A blocked command's reply just put a filter PING at the front.
            self.ping_clock = Some(now);
        }
        if self.follow == Follow::Draining && self.modes.queue.filter_pending() == 0 {
            self.follow = Follow::Detached;
        }
    }

    /// Remove `cuts` (sorted, disjoint buffer ranges) with one host write.
    fn apply_cuts(&mut self, buf: &mut impl Buffer, cuts: &[(usize, usize)]) -> bool {
        let Some(&(_, upto)) = cuts.last() else {
            return true;
        };
        let mut kept = Vec::new();
        let mut pos = 0;
        for &(s, e) in cuts {
            if s > pos {
                let Some(bytes) = buf.read(pos, s - pos) else {
                    return false;
                };
                kept.extend_from_slice(bytes);
            }
            pos = e;
        }
        buf.replace_prefix(upto, &kept)
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
        if self.closed || self.follow == Follow::Detached {
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
        if self.closed || self.follow == Follow::Detached {
            return TickAction::None;
        }
        if let Some(p) = &self.probe {
            if now < p.since + self.ping_timeout {
                return TickAction::None;
            }
            let holding = p.holding;
            if !p.own_ping {
                self.events.push(Event::KeepaliveFailed);
            }
            self.probe = None;
            self.events.push(Event::ProbeFailed);
            if !holding {
                // The command already went out behind the PING: as with any unanswered PING
                // that has a command behind it, the client's own timeout speaks.
                self.ping_clock = None;
                return TickAction::None;
            }
            self.closed = true;
            self.record_death(now);
            return TickAction::Close(CloseReason::ProbeFailed);
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
    pub fn upstream_closed(&mut self, now: Millis) -> bool {
        if self.closed {
            return false;
        }
        self.closed = true;
        if self.follow != Follow::Active {
            // Stepped aside: whether the client was idle is not known (a TLS session's
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
        if !self.upstream_seen || self.client_gone || self.modes.quitting {
            return false;
        }
        if self.modes.queue.client_pending() || !self.requests.at_boundary() {
            self.events.push(Event::BusyDeath);
            return false;
        }
        self.record_death(now);
        self.events
            .push(Event::ReconnectSignal(CloseReason::UpstreamClosed));
        true
    }

    /// The client closed its side (its FIN reached the filter). Redis's close that follows is
    /// the client's doing, not a dead link.
    pub fn client_closed(&mut self) {
        self.client_gone = true;
    }

    /// The host failed a call the session relies on (e.g. resuming the read): step aside.
    pub fn host_failed(&mut self) {
        self.step_aside(StepAside::HostRefused);
    }
}
