//! The content of scalars: bulk payloads (counted, never inspected) and simple lines (`+OK`,
//! `,3.14`: scanned with memchr), and the capture slot they fill.

use super::{Byte, Framer, St};
use crate::resp::{Frame, RespError, Side};
use memchr::memchr;

impl Framer {
    pub(super) fn start_payload(&mut self, n: u64) {
        self.rem = n;
        self.st = if n == 0 {
            St::Byte(Byte::PayloadCr)
        } else {
            St::Payload
        };
    }

    pub(super) fn payload(&mut self, rest: &[u8]) -> usize {
        let n = usize::try_from(self.rem)
            .unwrap_or(usize::MAX)
            .min(rest.len());
        if let Some(chunk) = rest.get(..n) {
            self.capture(chunk);
        }
        self.rem -= n as u64;
        self.offset = self.offset.saturating_add(n as u64);
        if self.rem == 0 {
            self.st = St::Byte(Byte::PayloadCr);
        }
        n
    }

    pub(super) fn payload_done(&mut self, sink: &mut dyn FnMut(&Frame)) -> Result<(), RespError> {
        match self.side {
            Side::Request => {
                self.argi += 1;
                if self.argi >= self.args {
                    self.emit(sink);
                } else {
                    self.st = St::Byte(Byte::Arg);
                }
                Ok(())
            }
            Side::Reply if self.streamed_str => {
                self.st = St::Byte(Byte::Chunk);
                Ok(())
            }
            Side::Reply => self.value_done(false, sink),
        }
    }

    // ---- simple lines ----

    pub(super) fn line(&mut self, rest: &[u8]) -> Result<usize, RespError> {
        let (content, used, cr) = match memchr(b'\r', rest) {
            Some(i) => (rest.get(..i).unwrap_or_default(), i + 1, true),
            None => (rest, rest.len(), false),
        };
        let before = self.line_len;
        self.line_len = before.saturating_add(content.len() as u64);
        match self.ty {
            // Strings and errors can be long: only scanned.
            b'+' | b'-' => {}
            b'#' => {
                if self.line_len > 1 || !content.iter().all(|&c| c == b't' || c == b'f') {
                    return Err(RespError::BadNumber);
                }
            }
            _ => {
                let ok = |c: &u8| match self.ty {
                    b'(' => c.is_ascii_digit() || *c == b'-' || *c == b'+',
                    // `,`: digits, sign, point, exponent, inf, nan.
                    _ => c.is_ascii_digit() || b"+-.eEiInNfFaA".contains(c),
                };
                // Whichever comes first, as if fed byte by byte: a bad character or the limit.
                let (head, over) = self.line_limit(before, content);
                if !head.iter().all(ok) {
                    return Err(RespError::BadNumber);
                }
                if over {
                    return Err(RespError::LineTooLong);
                }
            }
        }
        self.capture(content);
        self.offset = self.offset.saturating_add(used as u64);
        if cr {
            self.st = St::Byte(Byte::LineLf);
        }
        Ok(used)
    }

    /// The part of `seg` that fits in `max_line` after `before` bytes of the line, and whether
    /// some of it does not.
    pub(super) fn line_limit<'a>(&self, before: u64, seg: &'a [u8]) -> (&'a [u8], bool) {
        let room = (self.limits.max_line as u64).saturating_sub(before);
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        match seg.split_at_checked(room) {
            Some((head, _)) if room < seg.len() => (head, true),
            _ => (seg, false),
        }
    }

    pub(super) fn line_done(&mut self, sink: &mut dyn FnMut(&Frame)) -> Result<(), RespError> {
        if self.line_len == 0 && matches!(self.ty, b'#' | b',' | b'(') {
            return Err(RespError::BadNumber);
        }
        self.set_len(self.line_len);
        self.value_done(false, sink)
    }

    // ---- the capture slot of the current value ----

    /// The current value is a captured item (if it has a slot) of length `len` so far.
    pub(super) fn open_slot(&mut self, len: u64) {
        if let Some(s) = self.slot {
            self.frame.capture.open(s, len);
        }
    }

    /// Its full length, once known.
    pub(super) fn set_len(&mut self, len: u64) {
        if let Some(l) = self.slot.and_then(|s| self.frame.capture.lens.get_mut(s)) {
            *l = len;
        }
    }

    /// Bytes of its content: kept up to the capture prefix.
    pub(super) fn capture(&mut self, bytes: &[u8]) {
        if let Some(s) = self.slot {
            self.frame.capture.push(s, bytes);
        }
    }
}
