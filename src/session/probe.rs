//! Probe before stale reuse. A client command that arrives on a link with no byte from Redis
//! for `probe_after` is held in module memory; a PING goes out in its place, and the command
//! follows the PING's answer. A command that arrives while the filter's keepalive is still
//! unanswered is held the same way, behind that PING. No answer within `ping_timeout`, or the
//! server closes: the client connection is closed and the command is never sent, so the
//! application can safely retry it on a new connection.

use super::{Buffer, CloseReason, Event, Follow, PassthroughReason, Session, TickAction, PING};
use crate::duration::Millis;
use crate::reply_queue::Expect;

/// Beyond this many held bytes the filter stops holding and lets them follow the PING at once:
/// the order on the wire is still right, only the protection for this command is given up.
pub(super) const MAX_HELD: usize = 64 * 1024;

/// A probe PING in flight, and the client bytes held back behind it.
#[derive(Debug)]
pub(super) struct Probe {
    pub(super) held: Vec<u8>,
    pub(super) since: Millis,
    /// False once the bytes were let go early (too many, or passthrough): the
    /// probe still ends as passed or failed, but a failure can no longer keep the command back.
    pub(super) holding: bool,
    /// The probe sent its own PING (false: it holds the bytes behind a keepalive already out).
    pub(super) own_ping: bool,
}

impl Session {
    /// Whether a command arriving now must wait for a probe: the link has been silent for
    /// `probe_after` and the filter may speak (same rules as for a keepalive, nothing pending).
    pub(super) fn probe_due(&self, now: Millis) -> bool {
        let Some(after) = self.probe_after else {
            return false;
        };
        now.saturating_sub(self.last_server) >= after
            && !self.client_gone
            && self.modes.queue.is_empty()
            && self.requests.at_boundary()
            && self.may_ping()
    }

    /// The client is idle and the filter's keepalive, at the front, is still unanswered.
    pub(super) fn keepalive_unanswered(&self) -> bool {
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
    pub(super) fn hold(
        &mut self,
        now: Millis,
        buf: &mut impl Buffer,
        start: bool,
        behind_ping: bool,
    ) {
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
            self.pass_through(PassthroughReason::HostRefused);
            return;
        };
        let replacement: &[u8] = if start { PING } else { b"" };
        if (len > 0 || start) && !buf.replace_prefix(len, replacement) {
            self.pass_through(PassthroughReason::HostRefused);
            return;
        }
        if start {
            if self.spell.is_none() {
                self.spell = Some(now.saturating_sub(self.last_server));
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
    pub(super) fn release_held(&mut self) {
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

    /// What a tick does while a probe is out (None: no probe). Its PING unanswered within
    /// `ping_timeout`: the probe failed, and a command still held closes the connection.
    pub(super) fn probe_tick(&mut self, now: Millis) -> Option<TickAction> {
        let p = self.probe.as_ref()?;
        if now < p.since + self.ping_timeout {
            return Some(TickAction::None);
        }
        let holding = p.holding;
        if !p.own_ping {
            self.events.push(Event::KeepaliveFailed);
        }
        self.probe = None;
        self.events.push(Event::ProbeFailed);
        if !holding {
            // The command already went out behind the PING: as with any unanswered PING that
            // has a command behind it, the client's own timeout speaks.
            self.ping_clock = None;
            return Some(TickAction::None);
        }
        self.closed = true;
        self.record_death(now);
        Some(TickAction::Close(CloseReason::ProbeFailed))
    }
}
