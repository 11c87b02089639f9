//! The request side: where a command starts, multibulk headers (`*N`, `$L`) and inline
//! commands, split the way Redis' sdssplitargs splits them.

use super::header::Header;
use super::{Byte, Framer, Inl, St};
use crate::resp::{Frame, FrameKind, RespError, CAPTURE_ITEMS};
use memchr::memchr;

impl Framer {
    /// A command starts at stream offset `start`.
    pub(super) fn begin_command(&mut self, start: u64) {
        self.in_frame = true;
        self.frame.start = start;
        self.frame.kind = FrameKind::Command;
        self.frame.capture.clear();
        self.slot = None;
        self.argi = 0;
        self.args = 0;
    }

    pub(super) fn request_header(&mut self, h: Header) -> Result<(), RespError> {
        match (self.ty, h) {
            (b'*', Header::Pos(0) | Header::Neg(_)) => {
                // Redis: a multibulk count <= 0 is an empty command, silently consumed.
                self.in_frame = false;
                self.st = St::Byte(Byte::Type);
                Ok(())
            }
            (b'*', Header::Pos(n)) => {
                // Redis: "invalid multibulk length" above INT_MAX.
                if n > i32::MAX as u64 {
                    return Err(RespError::BadRequest);
                }
                self.args = n;
                self.argi = 0;
                self.frame.capture.count = n;
                self.st = St::Byte(Byte::Arg);
                Ok(())
            }
            (b'$', Header::Pos(n)) => {
                self.slot = usize::try_from(self.argi)
                    .ok()
                    .filter(|&i| i < CAPTURE_ITEMS);
                self.open_slot(n);
                self.start_payload(n);
                Ok(())
            }
            // Redis: "invalid bulk length".
            (b'$', Header::Neg(_)) => Err(RespError::BadRequest),
            _ => Err(RespError::BadNumber),
        }
    }

    pub(super) fn inline(
        &mut self,
        rest: &[u8],
        sink: &mut dyn FnMut(&Frame),
    ) -> Result<usize, RespError> {
        let (seg, used, eol) = match memchr(b'\n', rest) {
            Some(i) => (rest.get(..i).unwrap_or_default(), i + 1, true),
            None => (rest, rest.len(), false),
        };
        // Characters within the limit are split first: the error is the one byte-by-byte feeding
        // would give.
        let (head, over) = self.line_limit(self.line_len, seg);
        self.line_len = self.line_len.saturating_add(seg.len() as u64);
        for &c in head {
            if self.pending_cr {
                self.pending_cr = false;
                self.inline_char(b'\r')?;
            }
            if c == b'\r' {
                self.pending_cr = true;
            } else {
                self.inline_char(c)?;
            }
        }
        if over {
            return Err(RespError::LineTooLong);
        }
        self.offset = self.offset.saturating_add(used as u64);
        if eol {
            // Redis strips one CR before the LF and splits the line as a C string.
            self.pending_cr = false;
            self.inline_char(0)?;
            if self.args == 0 {
                // An empty line: Redis ignores it.
                self.in_frame = false;
                self.st = St::Byte(Byte::Type);
            } else {
                self.frame.capture.count = self.args;
                self.emit(sink);
            }
        }
        Ok(used)
    }

    /// One character of an inline line through sdssplitargs; NUL is the end of the line.
    fn inline_char(&mut self, c: u8) -> Result<(), RespError> {
        // At most two passes: an escape that turns out not to be one re-reads `c` as plain.
        for _ in 0..2 {
            match self.inl {
                Inl::Dead => {}
                Inl::Between => {
                    if c == 0 {
                        self.inl = Inl::Dead;
                    } else if !is_space(c) {
                        self.slot = usize::try_from(self.args)
                            .ok()
                            .filter(|&i| i < CAPTURE_ITEMS);
                        self.open_slot(0);
                        self.inl = Inl::Word;
                        continue;
                    }
                }
                Inl::Word => match c {
                    b' ' | b'\n' | b'\r' | b'\t' => self.word_end(Inl::Between),
                    0 => self.word_end(Inl::Dead),
                    b'"' => self.inl = Inl::Dq,
                    b'\'' => self.inl = Inl::Sq,
                    _ => self.word_push(c),
                },
                Inl::Dq => match c {
                    b'\\' => self.inl = Inl::DqEsc,
                    b'"' => self.inl = Inl::AfterQuote,
                    // Redis: "unbalanced quotes in request".
                    0 => return Err(RespError::BadRequest),
                    _ => self.word_push(c),
                },
                Inl::DqEsc => {
                    let e = match c {
                        0 => return Err(RespError::BadRequest),
                        b'x' => {
                            self.inl = Inl::DqEscX;
                            return Ok(());
                        }
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        _ => c,
                    };
                    self.word_push(e);
                    self.inl = Inl::Dq;
                }
                Inl::DqEscX => {
                    if hex(c).is_some() {
                        self.inl = Inl::DqEscXH(c);
                    } else {
                        // Not \xHH: the backslash escaped the `x`.
                        self.word_push(b'x');
                        self.inl = Inl::Dq;
                        continue;
                    }
                }
                Inl::DqEscXH(h) => {
                    self.inl = Inl::Dq;
                    if let (Some(hi), Some(lo)) = (hex(h), hex(c)) {
                        self.word_push(hi << 4 | lo);
                    } else {
                        self.word_push(b'x');
                        self.word_push(h);
                        continue;
                    }
                }
                Inl::Sq => match c {
                    b'\\' => self.inl = Inl::SqEsc,
                    b'\'' => self.inl = Inl::AfterQuote,
                    0 => return Err(RespError::BadRequest),
                    _ => self.word_push(c),
                },
                Inl::SqEsc => {
                    self.inl = Inl::Sq;
                    if c == b'\'' {
                        self.word_push(c);
                    } else {
                        self.word_push(b'\\');
                        continue;
                    }
                }
                Inl::AfterQuote => {
                    if c == 0 {
                        self.word_end(Inl::Dead);
                    } else if is_space(c) {
                        self.word_end(Inl::Between);
                    } else {
                        // Redis: a closing quote must be followed by a space or nothing.
                        return Err(RespError::BadRequest);
                    }
                }
            }
            return Ok(());
        }
        Ok(())
    }

    fn word_push(&mut self, c: u8) {
        if let Some(s) = self.slot {
            self.frame.capture.add_len(s, 1);
            self.frame.capture.push(s, &[c]);
        }
    }

    fn word_end(&mut self, next: Inl) {
        self.args += 1;
        self.slot = None;
        self.inl = next;
    }
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// C isspace() in the "C" locale.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}
