//! The reply side: a value's type byte, reply headers, aggregates (streamed ones included) and
//! attributes, and what completes a value and its parents.

use super::header::Header;
use super::{After, Byte, Framer, Level, St};
use crate::resp::{Frame, FrameKind, RespError, Side, CAPTURE_ITEMS};

impl Framer {
    pub(super) fn reply_type(&mut self, b: u8) -> Result<(), RespError> {
        let kind = match b {
            b'+' => FrameKind::Simple,
            b'-' | b'!' => FrameKind::Error,
            b':' | b',' | b'#' | b'(' => FrameKind::Number,
            b'$' | b'=' => FrameKind::Bulk,
            b'_' => FrameKind::Null,
            b'*' | b'~' | b'%' | b'|' => FrameKind::Aggregate,
            b'>' => FrameKind::Push,
            b'.' if self.stack.last().is_some_and(|l| l.streamed) => {
                self.st = St::Byte(Byte::Cr(After::EndAggregate));
                return Ok(());
            }
            _ => return Err(RespError::BadType(b)),
        };
        let attr = b == b'|';
        if !self.in_frame {
            // The type byte was just consumed.
            self.in_frame = true;
            self.frame.start = self.offset.saturating_sub(1);
            self.frame.capture.clear();
        }
        if self.stack.is_empty() && !attr {
            self.frame.kind = kind;
            self.frame.capture.clear();
            if is_scalar(b) {
                self.frame.capture.count = 1;
            }
        }
        // Which capture slot this value fills, if it is a scalar.
        self.slot = match self.stack.as_slice() {
            _ if attr => None,
            [] => Some(0),
            [l] if !l.attr => usize::try_from(l.seen).ok().filter(|&i| i < CAPTURE_ITEMS),
            _ => None,
        };
        self.ty = b;
        match b {
            b'+' | b'-' | b',' | b'(' | b'#' => {
                self.line_len = 0;
                self.open_slot(0);
                self.st = St::Line;
            }
            b'_' => {
                self.null_value();
                self.st = St::Byte(Byte::Cr(After::Null));
            }
            b':' => {
                self.open_slot(0);
                self.start_num(b);
            }
            _ => self.start_num(b),
        }
        Ok(())
    }

    pub(super) fn reply_header(
        &mut self,
        h: Header,
        sink: &mut dyn FnMut(&Frame),
    ) -> Result<(), RespError> {
        match (self.ty, h) {
            (b':', Header::Pos(_) | Header::Neg(_)) => {
                let len = self.num.len as u64;
                self.set_len(len);
                self.value_done(false, sink)
            }
            (b'$', Header::Stream) => {
                self.streamed_str = true;
                self.open_slot(0);
                self.st = St::Byte(Byte::Chunk);
                Ok(())
            }
            (b'$' | b'*', Header::Neg(1)) => {
                self.null_value();
                self.value_done(false, sink)
            }
            (b'$' | b'!' | b'=', Header::Pos(n)) => {
                self.open_slot(n);
                self.start_payload(n);
                Ok(())
            }
            (b';', Header::Pos(0)) => {
                self.streamed_str = false;
                self.value_done(false, sink)
            }
            (b';', Header::Pos(n)) => {
                if let Some(s) = self.slot {
                    self.frame.capture.add_len(s, n);
                }
                self.start_payload(n);
                Ok(())
            }
            (b'*' | b'~' | b'%' | b'>' | b'|', Header::Stream) => self.push_level(0, true),
            (b'*' | b'~' | b'%' | b'>' | b'|', Header::Pos(n)) => {
                let children = if matches!(self.ty, b'%' | b'|') {
                    n.checked_mul(2).ok_or(RespError::BadNumber)?
                } else {
                    n
                };
                if children == 0 {
                    // Empty aggregate: complete already; a top-level one has count 0.
                    self.slot = None;
                    return self.value_done(self.ty == b'|', sink);
                }
                self.push_level(children, false)
            }
            _ => Err(RespError::BadNumber),
        }
    }

    fn push_level(&mut self, rem: u64, streamed: bool) -> Result<(), RespError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(RespError::TooDeep);
        }
        self.stack.push(Level {
            rem,
            seen: 0,
            streamed,
            attr: self.ty == b'|',
        });
        self.st = St::Byte(Byte::Type);
        self.slot = None;
        Ok(())
    }

    /// The current value is a null: not an item; a top-level null has no items.
    fn null_value(&mut self) {
        self.slot = None;
        if self.stack.is_empty() && self.side == Side::Reply {
            self.frame.kind = FrameKind::Null;
            self.frame.capture.count = 0;
        }
    }

    /// A value (or an attribute) just ended: count it in its parent, close the parents it
    /// completes, and emit the frame if it was top-level.
    pub(super) fn value_done(
        &mut self,
        mut attr: bool,
        sink: &mut dyn FnMut(&Frame),
    ) -> Result<(), RespError> {
        self.st = St::Byte(Byte::Type);
        self.slot = None;
        loop {
            let Some(top) = self.stack.last_mut() else {
                if !attr {
                    self.emit(sink);
                }
                return Ok(());
            };
            if !attr {
                top.seen = top.seen.saturating_add(1);
                if !top.streamed {
                    top.rem = top.rem.saturating_sub(1);
                }
            }
            if top.streamed || top.rem > 0 {
                return Ok(());
            }
            let done = *top;
            self.stack.pop();
            if self.stack.is_empty() && !done.attr {
                self.frame.capture.count = done.seen;
            }
            attr = done.attr;
        }
    }

    pub(super) fn end_streamed(&mut self, sink: &mut dyn FnMut(&Frame)) -> Result<(), RespError> {
        let Some(done) = self.stack.pop() else {
            // Only reachable if `.` was accepted outside a streamed aggregate, which it is not.
            return Err(RespError::BadType(b'.'));
        };
        if self.stack.is_empty() && !done.attr {
            self.frame.capture.count = done.seen;
        }
        self.value_done(done.attr, sink)
    }
}

fn is_scalar(ty: u8) -> bool {
    !matches!(ty, b'*' | b'~' | b'%' | b'>' | b'|')
}
