//! The fast path: a whole common frame (a command of bulk strings; a `+`, `-`, `:` or `$`
//! reply) in canonical form read in one go, or one cut short inside its bulk payload. Most
//! traffic is these; the byte machine gives the same frames, only slower.

use super::{Framer, St, HEADER_MAX};
use crate::resp::{FrameKind, Side, CAPTURE_ITEMS};
use memchr::memchr;

/// What the framer's fast path did with the start of its input.
pub(super) enum Fast {
    /// A whole frame of this many bytes, ready to emit.
    Whole(usize, FrameKind),
    /// This many bytes consumed, inside a frame that goes on past them.
    InPayload(usize),
}

impl Framer {
    /// The fast path: a complete command made of bulk strings (`*N` then N `$L`), or a
    /// complete `+`, `-`, `:` or `$` reply, entirely inside `input`, in canonical form (no
    /// signs, no leading zeros, bounded sizes): [`Fast::Whole`], its capture built in
    /// `self.frame`. Or the same frame cut short inside a bulk payload (a large value arriving
    /// in several reads): [`Fast::InPayload`], the framer left in the state the byte machine
    /// would have reached, with all of `input` consumed. None sends the frame to the state
    /// machine (which accepts everything this accepts, with the same result: checked by the
    /// property tests at every split point); the capture is then left half-built, and the
    /// state machine clears it when the frame begins.
    pub(super) fn whole_frame(&mut self, input: &[u8]) -> Option<Fast> {
        self.frame.capture.clear();
        match (self.side, *input.first()?) {
            (Side::Request, b'*') => self.whole_command(input),
            (Side::Reply, b'$') => self.whole_bulk(input),
            (Side::Reply, ty @ (b'+' | b'-' | b':')) => self.whole_line(input, ty),
            _ => None,
        }
    }

    /// `*N` then N bulk strings `$L`: a command.
    fn whole_command(&mut self, input: &[u8]) -> Option<Fast> {
        let max_line = self.limits.max_line;
        let cap = &mut self.frame.capture;
        let (n, mut pos) = canonical_count(input, 1)?;
        if n == 0 || n > 1024 || !header_fits(0, pos, max_line) {
            return None;
        }
        cap.count = n;
        for i in 0..n as usize {
            if input.get(pos) != Some(&b'$') {
                return None;
            }
            let (len, start) = bulk_header(input, pos + 1)?;
            if !header_fits(pos, start, max_line) {
                return None;
            }
            let payload = input.get(start..)?;
            if (payload.len() as u64) < len {
                if i < CAPTURE_ITEMS {
                    cap.open(i, len);
                    cap.push(i, payload);
                }
                self.args = n;
                self.argi = i as u64;
                self.slot = Some(i).filter(|&i| i < CAPTURE_ITEMS);
                let rem = len - payload.len() as u64;
                return Some(self.enter_payload(FrameKind::Command, input.len(), rem));
            }
            let (payload, next) = bulk_after_header(input, start, len)?;
            if i < CAPTURE_ITEMS {
                cap.open(i, payload.len() as u64);
                cap.push(i, payload);
            }
            pos = next;
        }
        Some(Fast::Whole(pos, FrameKind::Command))
    }

    /// A `$` reply: a bulk string, or the RESP2 null `$-1`.
    fn whole_bulk(&mut self, input: &[u8]) -> Option<Fast> {
        let max_line = self.limits.max_line;
        let cap = &mut self.frame.capture;
        if input.starts_with(b"$-1\r\n") {
            return Some(Fast::Whole(5, FrameKind::Null));
        }
        cap.count = 1;
        let (len, start) = bulk_header(input, 1)?;
        if !header_fits(0, start, max_line) {
            return None;
        }
        let payload = input.get(start..)?;
        if (payload.len() as u64) < len {
            cap.open(0, len);
            cap.push(0, payload);
            self.slot = Some(0);
            let rem = len - payload.len() as u64;
            return Some(self.enter_payload(FrameKind::Bulk, input.len(), rem));
        }
        let (payload, next) = bulk_after_header(input, start, len)?;
        cap.open(0, payload.len() as u64);
        cap.push(0, payload);
        Some(Fast::Whole(next, FrameKind::Bulk))
    }

    /// A short `+`, `-` or `:` line (`ty`).
    fn whole_line(&mut self, input: &[u8], ty: u8) -> Option<Fast> {
        let max_line = self.limits.max_line;
        let cap = &mut self.frame.capture;
        let body = input.get(1..)?;
        let cr = memchr(b'\r', body.get(..body.len().min(SHORT_LINE))?)?;
        let text = body.get(..cr)?;
        if body.get(cr + 1) != Some(&b'\n') || memchr(b'\n', text).is_some() {
            return None;
        }
        let kind = match ty {
            b'+' => FrameKind::Simple,
            b'-' => FrameKind::Error,
            _ => {
                // Integers only as plain digits; signs and odd forms take the slow path.
                if canonical_count(input, 1)?.1 != cr + 3 {
                    return None;
                }
                FrameKind::Number
            }
        };
        if cr + 3 > max_line {
            return None;
        }
        cap.count = 1;
        cap.open(0, text.len() as u64);
        cap.push(0, text);
        Some(Fast::Whole(cr + 3, kind))
    }

    /// The fast path consumed `consumed` bytes: a top-level frame of `kind` whose current bulk
    /// string (its slot and capture already set) has `rem` payload bytes still to come.
    fn enter_payload(&mut self, kind: FrameKind, consumed: usize, rem: u64) -> Fast {
        self.in_frame = true;
        self.frame.start = self.offset;
        self.frame.kind = kind;
        self.ty = b'$';
        self.offset = self.offset.saturating_add(consumed as u64);
        self.st = St::Payload;
        self.rem = rem;
        Fast::InPayload(consumed)
    }
}

/// Simple lines the fast path takes (longer ones are framed byte by byte).
const SHORT_LINE: usize = 1024;

/// A canonical count or length at `pos` (1 to 9 digits, no sign, no leading zero) and its CRLF:
/// the value and the position after the CRLF.
fn canonical_count(input: &[u8], pos: usize) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    let mut end = pos;
    while let Some(&d) = input.get(end) {
        if !d.is_ascii_digit() {
            break;
        }
        value = value * 10 + u64::from(d - b'0');
        end += 1;
        if end - pos > 9 {
            return None;
        }
    }
    let digits = end - pos;
    if digits == 0 || (digits > 1 && input.get(pos) == Some(&b'0')) {
        return None;
    }
    if input.get(end..end + 2)? != b"\r\n" {
        return None;
    }
    Some((value, end + 2))
}

/// A bulk string's length header at `pos` (after the `$`), in canonical form and within
/// bounds: the length and where the payload starts.
fn bulk_header(input: &[u8], pos: usize) -> Option<(u64, usize)> {
    let (len, start) = canonical_count(input, pos)?;
    // Redis's proto-max-bulk-len default; the state machine judges anything bigger.
    (len <= 512 * 1024 * 1024).then_some((len, start))
}

/// Whether a header line spanning `[type_at, end)` (type byte to LF) is within `max_line`,
/// as the state machine judges it.
fn header_fits(type_at: usize, end: usize, max_line: usize) -> bool {
    end - type_at <= HEADER_MAX.min(max_line)
}

/// A bulk string's payload of `len` bytes at `start` and its CRLF, all present: the payload
/// and the position after it.
fn bulk_after_header(input: &[u8], start: usize, len: u64) -> Option<(&[u8], usize)> {
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    let payload = input.get(start..end)?;
    if input.get(end..end + 2)? != b"\r\n" {
        return None;
    }
    Some((payload, end + 2))
}
