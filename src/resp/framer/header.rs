//! Header lines: the number after a type byte (`$5`, `*2`, `:42`, `;4`, `*?`), parsed a byte
//! at a time and bounded, then handed to the request or the reply side.

use super::{Byte, Framer, Num, St, HEADER_MAX};
use crate::resp::{Frame, RespError, Side};

/// A parsed header value.
#[derive(Debug, Clone, Copy)]
pub(super) enum Header {
    Stream,
    Pos(u64),
    /// Magnitude of a negative number (never 0).
    Neg(u64),
}

impl Framer {
    pub(super) fn start_num(&mut self, ty: u8) {
        self.ty = ty;
        self.num = Num::default();
        self.st = St::Byte(Byte::Num);
    }

    pub(super) fn num_byte(&mut self, b: u8) -> Result<(), RespError> {
        if b == b'\r' {
            self.st = St::Byte(Byte::NumLf);
            return Ok(());
        }
        let n = &mut self.num;
        n.len += 1;
        // type byte + text + CRLF
        if n.len + 3 > HEADER_MAX.min(self.limits.max_line) {
            return Err(RespError::LineTooLong);
        }
        if n.question {
            return Err(RespError::BadNumber);
        }
        match b {
            b'-' if n.len == 1 => n.neg = true,
            b'?' if n.len == 1 && self.side == Side::Reply && streamable(self.ty) => {
                n.question = true
            }
            b'0'..=b'9' => {
                let limit = if n.neg { 1u64 << 63 } else { i64::MAX as u64 };
                n.val = n
                    .val
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                    .filter(|&v| v <= limit)
                    .ok_or(RespError::BadNumber)?;
                n.digits += 1;
            }
            _ => return Err(RespError::BadNumber),
        }
        if self.ty == b':' {
            self.capture(&[b]);
        }
        Ok(())
    }

    pub(super) fn header(&mut self, sink: &mut dyn FnMut(&Frame)) -> Result<(), RespError> {
        let n = self.num;
        let h = if n.question {
            Header::Stream
        } else if n.digits == 0 {
            return Err(RespError::BadNumber);
        } else if n.neg && n.val > 0 {
            Header::Neg(n.val)
        } else {
            Header::Pos(n.val)
        };
        match self.side {
            Side::Request => self.request_header(h),
            Side::Reply => self.reply_header(h, sink),
        }
    }
}

fn streamable(ty: u8) -> bool {
    matches!(ty, b'$' | b'*' | b'~' | b'%' | b'>' | b'|')
}
