//! Incremental RESP framer: a byte state machine over one direction of a connection.
//!
//! Every byte is looked at once (bulk payloads not even that: they are counted, and the adapter
//! can skip them without fetching them from the host), whatever the segmentation. Nesting is an
//! explicit stack bounded by [`Limits::max_depth`], never recursion. Nothing is buffered but a
//! fixed-size [`Capture`] of the first items of the current top-level frame.
//!
//! This file holds the framer's state, its public API and the byte dispatcher; the rest is
//! `impl Framer` blocks by what they read: `fast` (whole common frames in one go), `header`
//! (`$5`, `*2`, `:42` lines), `payload` (bulk payloads and simple lines), `request` (commands,
//! inline ones included) and `reply` (reply values, aggregates, attributes).

mod fast;
mod header;
mod payload;
mod reply;
mod request;
#[cfg(test)]
mod tests;

use super::{Capture, Frame, FrameKind, Limits, RespError, Side};
use fast::Fast;

/// Header lines (`$123\r\n`, `*2\r\n`, `:42\r\n`) never need more than this: an i64 is at most
/// 20 characters. Bounded further by `Limits::max_line` when that is smaller.
const HEADER_MAX: usize = 64;

/// One open aggregate.
#[derive(Debug, Clone, Copy)]
struct Level {
    /// Children still expected (unused when streamed).
    rem: u64,
    /// Children seen so far (attributes excluded).
    seen: u64,
    /// `*?` etc.: ends with `.\r\n`.
    streamed: bool,
    /// An attribute: not an element of its parent.
    attr: bool,
}

/// What a `\r\n` that is not part of a header, line or payload completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// `_\r\n`
    Null,
    /// `.\r\n`: end of a streamed aggregate.
    EndAggregate,
}

/// States that consume one byte at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Byte {
    /// First byte of a value (Reply) or of a command (Request).
    Type,
    /// Digits of a header (after `$ * % ~ > | ! = ; :`), up to CR.
    Num,
    NumLf,
    /// LF ending a simple/number line.
    LineLf,
    PayloadCr,
    PayloadLf,
    Cr(After),
    Lf(After),
    /// Inside a streamed string: `;` of the next chunk.
    Chunk,
    /// Inside a multibulk request: `$` of the next argument.
    Arg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Byte(Byte),
    /// Bulk payload: `rem` bytes, counted (and captured up to the prefix), never inspected.
    Payload,
    /// `+ - , ( #` line content up to CR: scanned with memchr.
    Line,
    /// An inline command, up to LF.
    Inline,
}

/// Header number being parsed.
#[derive(Debug, Clone, Copy, Default)]
struct Num {
    /// Characters seen.
    len: usize,
    neg: bool,
    digits: usize,
    val: u64,
    /// `?`: streamed.
    question: bool,
}

/// sdssplitargs states (Redis' inline command splitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inl {
    /// Between words, skipping isspace().
    Between,
    Word,
    /// Inside "…"
    Dq,
    /// "…\
    DqEsc,
    /// "…\x
    DqEscX,
    /// "…\xH (the hex digit as sent)
    DqEscXH(u8),
    /// Inside '…'
    Sq,
    /// '…\
    SqEsc,
    /// Just after a closing quote: needs a space or the end.
    AfterQuote,
    /// After a NUL: Redis splits a C string, so the rest of the line is ignored.
    Dead,
}

/// Incremental RESP framer for one direction of one connection.
pub struct Framer {
    side: Side,
    limits: Limits,
    offset: u64,
    error: Option<RespError>,
    st: St,
    stack: Vec<Level>,

    // The top-level frame being read.
    in_frame: bool,
    /// The frame being read, built in place (start, kind, capture) and handed to the sink by
    /// reference: no copy of its capture per frame.
    frame: Frame,

    // The value being read.
    ty: u8,
    num: Num,
    /// Payload bytes left.
    rem: u64,
    /// Capture slot of the current scalar / argument / word.
    slot: Option<usize>,
    /// Length of the current line (simple/number line, inline command).
    line_len: u64,
    /// Inside a `$?` streamed string.
    streamed_str: bool,

    // Request side.
    /// Multibulk: arguments declared / seen. Inline: words seen.
    args: u64,
    argi: u64,
    inl: Inl,
    /// A CR that is stripped if the next byte is the LF ending the inline line.
    pending_cr: bool,
}

impl Framer {
    pub fn new(side: Side, limits: Limits) -> Self {
        Framer {
            side,
            limits,
            offset: 0,
            error: None,
            st: St::Byte(Byte::Type),
            // Grows on demand (bounded by max_depth, checked before each push): most traffic
            // nests a level or two, and an idle connection should not hold kilobytes.
            stack: Vec::new(),
            in_frame: false,
            frame: Frame {
                start: 0,
                end: 0,
                kind: FrameKind::Null,
                capture: Capture::EMPTY,
            },
            ty: 0,
            num: Num::default(),
            rem: 0,
            slot: None,
            line_len: 0,
            streamed_str: false,
            args: 0,
            argi: 0,
            inl: Inl::Between,
            pending_cr: false,
        }
    }

    /// Consume all of `input` (the bytes that follow everything fed or skipped so far) and call
    /// `sink` for every top-level frame that completes in it, in order. After an error the
    /// framer is poisoned: every later call returns the same error.
    pub fn feed(&mut self, input: &[u8], sink: &mut dyn FnMut(&Frame)) -> Result<(), RespError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let mut rest = input;
        while !rest.is_empty() {
            // Whole common frames in one go; anything else, or anything cut short, goes
            // through the byte state machine below, which gives the same frames.
            if self.is_pristine() {
                match self.whole_frame(rest) {
                    Some(Fast::Whole(n, kind)) => {
                        self.frame.start = self.offset;
                        self.offset = self.offset.saturating_add(n as u64);
                        self.frame.end = self.offset;
                        self.frame.kind = kind;
                        sink(&self.frame);
                        rest = rest.get(n..).unwrap_or_default();
                        continue;
                    }
                    Some(Fast::InPayload(n)) => {
                        rest = rest.get(n..).unwrap_or_default();
                        continue;
                    }
                    None => {}
                }
            }
            match self.step(rest, sink) {
                // step consumes at least one byte of a non-empty input.
                Ok(n) => rest = rest.get(n.max(1)..).unwrap_or_default(),
                Err(e) => {
                    self.error = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Bytes the framer would consume without looking at them (the rest of a bulk payload, not
    /// its CRLF). The adapter skips these instead of fetching them from the host.
    pub fn skippable(&self) -> u64 {
        if self.error.is_some() || self.st != St::Payload {
            return 0;
        }
        match self.slot {
            // The capture prefix still needs these bytes.
            Some(s) if self.frame.capture.wants(s) => 0,
            _ => self.rem,
        }
    }

    /// Consume `n <= skippable()` bytes unseen.
    pub fn skip(&mut self, n: u64) {
        // Clamped: skipping more than allowed would desynchronise the framer.
        let n = n.min(self.skippable());
        if n == 0 {
            return;
        }
        self.rem -= n;
        self.offset = self.offset.saturating_add(n);
        if self.rem == 0 {
            self.st = St::Byte(Byte::PayloadCr);
        }
    }

    /// Total bytes consumed (fed + skipped).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// True between frames: no partial frame pending.
    pub fn at_boundary(&self) -> bool {
        !self.in_frame
    }

    /// Between frames with nothing carried over: the next byte starts a new frame, so this
    /// framer is equivalent to a fresh one at the same offset (see [`Framer::restart_at`]).
    pub fn is_pristine(&self) -> bool {
        !self.in_frame
            && self.error.is_none()
            && self.st == St::Byte(Byte::Type)
            && self.stack.is_empty()
            && !self.pending_cr
            && self.inl == Inl::Between
            && !self.streamed_str
    }

    /// Become a fresh framer whose stream starts at `offset` (keeps the depth stack's storage).
    pub fn restart_at(&mut self, offset: u64) {
        if self.is_pristine() {
            // Nothing carried over (the usual case for a parked spare): only the offset moves.
            self.offset = offset;
            return;
        }
        let mut stack = std::mem::take(&mut self.stack);
        stack.clear();
        *self = Framer::new(self.side, self.limits);
        self.stack = stack;
        self.offset = offset;
    }

    pub fn side(&self) -> Side {
        self.side
    }

    /// The error that poisoned this framer, if any.
    pub fn error(&self) -> Option<&RespError> {
        self.error.as_ref()
    }

    /// Consumes a prefix (at least one byte) of non-empty `rest`; returns its length.
    fn step(&mut self, rest: &[u8], sink: &mut dyn FnMut(&Frame)) -> Result<usize, RespError> {
        let Some(&b) = rest.first() else {
            return Ok(0);
        };
        match self.st {
            St::Payload => Ok(self.payload(rest)),
            St::Line => self.line(rest),
            St::Inline => self.inline(rest, sink),
            St::Byte(Byte::Type) if self.side == Side::Request && b != b'*' => {
                // Redis: a command not starting with `*` is an inline command.
                self.begin_command(self.offset);
                self.inl = Inl::Between;
                self.pending_cr = false;
                self.args = 0;
                self.line_len = 0;
                self.st = St::Inline;
                self.inline(rest, sink)
            }
            St::Byte(s) => {
                self.offset = self.offset.saturating_add(1);
                self.byte(s, b, sink)?;
                Ok(1)
            }
        }
    }

    fn byte(&mut self, s: Byte, b: u8, sink: &mut dyn FnMut(&Frame)) -> Result<(), RespError> {
        match s {
            Byte::Type => match self.side {
                Side::Reply => self.reply_type(b),
                Side::Request => {
                    // Only `*` gets here (see step).
                    self.begin_command(self.offset.saturating_sub(1));
                    self.start_num(b'*');
                    Ok(())
                }
            },
            Byte::Num => self.num_byte(b),
            Byte::NumLf => {
                expect_lf(b)?;
                self.header(sink)
            }
            Byte::LineLf => {
                expect_lf(b)?;
                self.line_done(sink)
            }
            Byte::PayloadCr => self.expect_cr(b, Byte::PayloadLf),
            Byte::PayloadLf => {
                expect_lf(b)?;
                self.payload_done(sink)
            }
            Byte::Cr(after) => self.expect_cr(b, Byte::Lf(after)),
            Byte::Lf(after) => {
                expect_lf(b)?;
                match after {
                    After::Null => self.value_done(false, sink),
                    After::EndAggregate => self.end_streamed(sink),
                }
            }
            Byte::Chunk => {
                if b != b';' {
                    return Err(RespError::BadType(b));
                }
                self.start_num(b';');
                Ok(())
            }
            Byte::Arg => {
                // Redis: "expected '$', got '%c'".
                if b != b'$' {
                    return Err(RespError::BadRequest);
                }
                self.start_num(b'$');
                Ok(())
            }
        }
    }

    fn expect_cr(&mut self, b: u8, next: Byte) -> Result<(), RespError> {
        if b != b'\r' {
            return Err(RespError::ExpectedCrlf);
        }
        self.st = St::Byte(next);
        Ok(())
    }

    /// The top-level frame ends here: hand it to the sink.
    fn emit(&mut self, sink: &mut dyn FnMut(&Frame)) {
        self.in_frame = false;
        self.st = St::Byte(Byte::Type);
        self.frame.end = self.offset;
        sink(&self.frame);
    }
}

fn expect_lf(b: u8) -> Result<(), RespError> {
    if b == b'\n' {
        Ok(())
    } else {
        Err(RespError::ExpectedCrlf)
    }
}
