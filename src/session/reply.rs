//! The reply pass: Redis's bytes on their way to the client. Each complete reply takes its
//! place in the reply queue; the filter's own (answers to its PINGs) are verified and cut out.
//!
//! # How its reply is recognised and removed
//! The PING carries a token, `PING redis-idle-guard`. The reply queue knows, in wire order,
//! whose each reply is; pushes (`>`) and, on a RESP2 subscribed connection, pubsub-shaped arrays
//! (`message`, `subscribe`, …) are out of band and never take a place in it. A reply in a
//! filter place is removed only if it is exactly `$16\r\nredis-idle-guard\r\n` (RESP2 subscribed:
//! `*2 $4 pong $16 redis-idle-guard`) or an error (`-NOAUTH`, `-LOADING`…); anything else means
//! we lost track, and the connection goes to passthrough rather than guess. A filter reply split across
//! reads is cut from the first read and held (it is at most a few dozen bytes), and put back
//! at the front of the next read if it turns out not to be ours.

use super::modes::Modes;
use super::window::{frame_buffer, LoopStop};
use super::{Buffer, Event, Follow, PassthroughReason, Session};
use crate::duration::Millis;
use crate::reply_queue::Expect;
use crate::resp::{Frame, FrameKind};

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

/// A reply in a filter place: its stream offsets (start, end) and whether it is an error.
type OwnReply = (u64, u64, bool);

/// What the reply loop decided about each complete frame of one read.
struct ReplyPass<'a> {
    modes: &'a mut Modes,
    follow: &'a mut Follow,
    /// Complete filter replies in this read, to verify and remove.
    ours: Vec<OwnReply>,
    lost: Option<&'static str>,
    last_end: &'a mut u64,
}

impl ReplyPass<'_> {
    fn on_reply(&mut self, frame: &Frame) {
        *self.last_end = frame.end;
        if *self.follow == Follow::Passthrough || self.lost.is_some() {
            return;
        }
        if *self.follow == Follow::Draining && self.modes.queue.filter_pending() == 0 {
            *self.follow = Follow::Passthrough;
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

impl Session {
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
    ///
    /// One function, longer than the rest, on purpose: it is the hot path of every server read,
    /// and each split of it tried moved the .wasm's instructions per request by a few (counted
    /// by tests/bench_instructions.rs).
    pub fn on_server_data(&mut self, now: Millis, buf: &mut impl Buffer) {
        if !buf.is_empty() || !self.carry.is_empty() {
            if let Some(idle_ms) = self.spell.take() {
                self.events.push(Event::IdleSurvived { idle_ms });
            }
            self.last_activity = now;
            self.last_server = now;
            self.server_seen = true;
        }
        if self.follow == Follow::Passthrough {
            return;
        }
        // Put back the held head of a frame, in front of the bytes that follow it.
        let carried = std::mem::take(&mut self.carry);
        if !carried.is_empty() && !buf.replace_prefix(0, &carried) {
            self.pass_through_now(PassthroughReason::HostRefused);
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
                self.pass_through_now(PassthroughReason::ReplyParse(e));
                return;
            }
            Err(LoopStop::HostRead) => {
                self.pass_through_now(PassthroughReason::HostRefused);
                return;
            }
        }
        if let Some(why) = lost {
            self.apply_cuts(buf, &cuts);
            self.pass_through_now(PassthroughReason::LostTrack(why));
            return;
        }

        // A partial frame at the end that may be the filter's: hold its head back.
        if !self.replies.at_boundary()
            && self.follow != Follow::Passthrough
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
            self.pass_through_now(PassthroughReason::HostRefused);
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
            self.follow = Follow::Passthrough;
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
}
