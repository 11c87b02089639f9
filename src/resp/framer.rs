//! Incremental RESP framer: a byte state machine over one direction of a connection.
//!
//! Every byte is looked at once (bulk payloads not even that: they are counted, and the adapter
//! can skip them without fetching them from the host), whatever the segmentation. Nesting is an
//! explicit stack bounded by [`Limits::max_depth`], never recursion. Nothing is buffered but a
//! fixed-size [`Capture`] of the first items of the current top-level frame.

use super::RespError;
use memchr::memchr;

/// Which side of the connection a framer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Client → Redis: RESP arrays of bulk strings, or inline commands (`PING\r\n`).
    Request,
    /// Redis → client: any RESP2/RESP3 frame, attributes and streamed aggregates included.
    Reply,
}

/// Bounds that keep the framer's memory and stack use constant on hostile input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum nesting of aggregates (arrays, maps, sets, pushes, attributes).
    pub max_depth: usize,
    /// Maximum length of a header line (type byte + number + CRLF), and of an inline command.
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 64,
            max_line: 64 * 1024,
        }
    }
}

/// How many leading items of a top-level frame are captured, and how many bytes of each.
pub const CAPTURE_ITEMS: usize = 8;
pub const CAPTURE_LEN: usize = 16;

/// Header lines (`$123\r\n`, `*2\r\n`, `:42\r\n`) never need more than this: an i64 is at most
/// 20 characters. Bounded further by `Limits::max_line` when that is smaller.
const HEADER_MAX: usize = 64;

/// The first bytes of the first items of a top-level frame: enough to classify a command
/// (`CLIENT REPLY OFF`, `XREAD … BLOCK`) or recognise a reply (`pong`, `message`), never a payload.
///
/// What is in it:
/// - Command (either form): count = number of arguments, items = the arguments (item 0 is the
///   command name as sent, case preserved).
/// - Top-level aggregate (`*` `~` `%` `>`, streamed too): count = number of direct children
///   (2n for a map; for a streamed aggregate the children seen); items = the first
///   CAPTURE_ITEMS children, `None` for children that are aggregates or nulls. Attributes are
///   never items and never counted.
/// - Top-level scalar: count = 1, item 0 = its content (for a streamed string the concatenated
///   chunks; for a verbatim string the raw payload, `txt:` prefix included).
/// - Top-level null (`_`, `$-1`, `*-1`): count = 0, no items.
#[derive(Clone, Copy)]
pub struct Capture {
    count: u64,
    /// Bit i set: item i is a scalar (its len/data are meaningful).
    present: u8,
    lens: [u64; CAPTURE_ITEMS],
    filled: [u8; CAPTURE_ITEMS],
    data: [[u8; CAPTURE_LEN]; CAPTURE_ITEMS],
}

impl Capture {
    const EMPTY: Capture = Capture {
        count: 0,
        present: 0,
        lens: [0; CAPTURE_ITEMS],
        filled: [0; CAPTURE_ITEMS],
        data: [[0; CAPTURE_LEN]; CAPTURE_ITEMS],
    };

    /// Number of items in the frame: aggregate element count (or words of an inline command);
    /// 1 for a scalar.
    pub fn count(&self) -> u64 {
        self.count
    }
    /// Prefix (at most CAPTURE_LEN bytes) of item `i` (i < CAPTURE_ITEMS) if it is a scalar:
    /// bulk/verbatim/simple string/error text, or an integer/double/boolean/big number as its
    /// text. None for aggregates, nulls, and items past CAPTURE_ITEMS or count.
    pub fn item(&self, i: usize) -> Option<&[u8]> {
        if !self.has(i) {
            return None;
        }
        let filled = usize::from(*self.filled.get(i)?);
        self.data.get(i)?.get(..filled)
    }
    /// Full length of item `i`'s scalar value (may exceed the captured prefix).
    pub fn item_len(&self, i: usize) -> Option<u64> {
        if !self.has(i) {
            return None;
        }
        self.lens.get(i).copied()
    }

    /// Forgets the items; their stale bytes stay (unreachable: `filled` is reset on `open`).
    fn clear(&mut self) {
        self.count = 0;
        self.present = 0;
    }

    fn has(&self, i: usize) -> bool {
        i < CAPTURE_ITEMS && (self.present >> i) & 1 == 1
    }

    /// Marks slot `s` as a scalar of (initial) length `len`.
    fn open(&mut self, s: usize, len: u64) {
        if let (Some(l), Some(f)) = (self.lens.get_mut(s), self.filled.get_mut(s)) {
            *l = len;
            *f = 0;
            self.present |= 1 << s;
        }
    }

    fn add_len(&mut self, s: usize, n: u64) {
        if let Some(l) = self.lens.get_mut(s) {
            *l = l.saturating_add(n);
        }
    }

    /// Slot `s` still wants prefix bytes.
    fn wants(&self, s: usize) -> bool {
        self.filled
            .get(s)
            .is_some_and(|&f| usize::from(f) < CAPTURE_LEN)
    }

    /// Appends as much of `bytes` as fits in slot `s`'s prefix.
    fn push(&mut self, s: usize, bytes: &[u8]) {
        let (Some(f), Some(d)) = (self.filled.get_mut(s), self.data.get_mut(s)) else {
            return;
        };
        let have = usize::from(*f);
        let take = CAPTURE_LEN.saturating_sub(have).min(bytes.len());
        if let (Some(dst), Some(src)) = (d.get_mut(have..have + take), bytes.get(..take)) {
            dst.copy_from_slice(src);
            // take <= CAPTURE_LEN (16), fits in u8.
            *f = u8::try_from(have + take).unwrap_or(u8::MAX);
        }
    }
}

/// Equal when count and every visible item (prefix and length) are equal.
impl PartialEq for Capture {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count
            && self.present == other.present
            && (0..CAPTURE_ITEMS)
                .all(|i| self.item(i) == other.item(i) && self.item_len(i) == other.item_len(i))
    }
}

impl Eq for Capture {}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("count", &self.count)
            .field("items", &Items(self))
            .finish()
    }
}

/// Debug view of the captured items: `"prefix"/len`, `-` for a non-scalar.
struct Items<'a>(&'a Capture);

impl std::fmt::Debug for Items<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = CAPTURE_ITEMS.min(usize::try_from(self.0.count).unwrap_or(usize::MAX));
        f.debug_list()
            .entries((0..n).map(|i| match (self.0.item(i), self.0.item_len(i)) {
                (Some(b), Some(len)) => format!("{:?}/{len}", String::from_utf8_lossy(b)),
                _ => "-".to_string(),
            }))
            .finish()
    }
}

/// What the framer's fast path did with the start of its input.
enum Fast {
    /// A whole frame of this many bytes, ready to emit.
    Whole(usize, FrameKind),
    /// This many bytes consumed, inside a frame that goes on past them.
    InPayload(usize),
}

/// The kind of a complete top-level frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A client command (Request side), multibulk or inline. `capture` holds its words.
    Command,
    /// `+` simple string
    Simple,
    /// `-` simple error or `!` blob error
    Error,
    /// `:` `,` `#` `(` number-like scalars
    Number,
    /// `$` or `=` bulk/verbatim string (streamed `$?` included)
    Bulk,
    /// `_`, `$-1`, `*-1`
    Null,
    /// `*` array, `~` set, `%` map (streamed included)
    Aggregate,
    /// `>` push: out-of-band, never the reply to a command
    Push,
}

/// A complete top-level frame. Offsets count bytes since the framer was created.
/// An attribute (`|`) is not a frame by itself: it is folded into the frame that follows it
/// (`start` is the attribute's first byte, kind/capture are those of the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub start: u64,
    pub end: u64,
    pub kind: FrameKind,
    pub capture: Capture,
}

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

/// A parsed header value.
#[derive(Debug, Clone, Copy)]
enum Header {
    Stream,
    Pos(u64),
    /// Magnitude of a negative number (never 0).
    Neg(u64),
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

    /// The fast path: a complete command made of bulk strings (`*N` then N `$L`), or a
    /// complete `+`, `-`, `:` or `$` reply, entirely inside `input`, in canonical form (no
    /// signs, no leading zeros, bounded sizes): [`Fast::Whole`], its capture built in
    /// `self.frame`. Or the same frame cut short inside a bulk payload (a large value arriving
    /// in several reads): [`Fast::InPayload`], the framer left in the state the byte machine
    /// would have reached, with all of `input` consumed. None sends the frame to the state
    /// machine (which accepts everything this accepts, with the same result: checked by the
    /// property tests at every split point); the capture is then left half-built, and the
    /// state machine clears it when the frame begins.
    fn whole_frame(&mut self, input: &[u8]) -> Option<Fast> {
        let max_line = self.limits.max_line;
        let cap = &mut self.frame.capture;
        cap.clear();
        match (self.side, *input.first()?) {
            (Side::Request, b'*') => {
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
            (Side::Reply, b'$') => {
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
            (Side::Reply, ty @ (b'+' | b'-' | b':')) => {
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
            _ => None,
        }
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

    // ---- frames and values ----

    /// A command starts at stream offset `start`.
    fn begin_command(&mut self, start: u64) {
        self.in_frame = true;
        self.frame.start = start;
        self.frame.kind = FrameKind::Command;
        self.frame.capture.clear();
        self.slot = None;
        self.argi = 0;
        self.args = 0;
    }

    fn reply_type(&mut self, b: u8) -> Result<(), RespError> {
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

    fn set_len(&mut self, len: u64) {
        if let Some(l) = self.slot.and_then(|s| self.frame.capture.lens.get_mut(s)) {
            *l = len;
        }
    }

    fn open_slot(&mut self, len: u64) {
        if let Some(s) = self.slot {
            self.frame.capture.open(s, len);
        }
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
    fn value_done(
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

    fn end_streamed(&mut self, sink: &mut dyn FnMut(&Frame)) -> Result<(), RespError> {
        let Some(done) = self.stack.pop() else {
            // Only reachable if `.` was accepted outside a streamed aggregate, which it is not.
            return Err(RespError::BadType(b'.'));
        };
        if self.stack.is_empty() && !done.attr {
            self.frame.capture.count = done.seen;
        }
        self.value_done(done.attr, sink)
    }

    fn emit(&mut self, sink: &mut dyn FnMut(&Frame)) {
        self.in_frame = false;
        self.st = St::Byte(Byte::Type);
        self.frame.end = self.offset;
        sink(&self.frame);
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

    // ---- headers ----

    fn start_num(&mut self, ty: u8) {
        self.ty = ty;
        self.num = Num::default();
        self.st = St::Byte(Byte::Num);
    }

    fn num_byte(&mut self, b: u8) -> Result<(), RespError> {
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

    fn header(&mut self, sink: &mut dyn FnMut(&Frame)) -> Result<(), RespError> {
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

    fn reply_header(&mut self, h: Header, sink: &mut dyn FnMut(&Frame)) -> Result<(), RespError> {
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

    fn request_header(&mut self, h: Header) -> Result<(), RespError> {
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

    // ---- payloads ----

    fn start_payload(&mut self, n: u64) {
        self.rem = n;
        self.st = if n == 0 {
            St::Byte(Byte::PayloadCr)
        } else {
            St::Payload
        };
    }

    fn payload(&mut self, rest: &[u8]) -> usize {
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

    fn payload_done(&mut self, sink: &mut dyn FnMut(&Frame)) -> Result<(), RespError> {
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

    fn capture(&mut self, bytes: &[u8]) {
        if let Some(s) = self.slot {
            self.frame.capture.push(s, bytes);
        }
    }

    // ---- simple lines ----

    fn line(&mut self, rest: &[u8]) -> Result<usize, RespError> {
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
    fn line_limit<'a>(&self, before: u64, seg: &'a [u8]) -> (&'a [u8], bool) {
        let room = (self.limits.max_line as u64).saturating_sub(before);
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        match seg.split_at_checked(room) {
            Some((head, _)) if room < seg.len() => (head, true),
            _ => (seg, false),
        }
    }

    fn line_done(&mut self, sink: &mut dyn FnMut(&Frame)) -> Result<(), RespError> {
        if self.line_len == 0 && matches!(self.ty, b'#' | b',' | b'(') {
            return Err(RespError::BadNumber);
        }
        self.set_len(self.line_len);
        self.value_done(false, sink)
    }

    // ---- inline commands ----

    fn inline(&mut self, rest: &[u8], sink: &mut dyn FnMut(&Frame)) -> Result<usize, RespError> {
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

fn expect_lf(b: u8) -> Result<(), RespError> {
    if b == b'\n' {
        Ok(())
    } else {
        Err(RespError::ExpectedCrlf)
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

fn is_scalar(ty: u8) -> bool {
    !matches!(ty, b'*' | b'~' | b'%' | b'>' | b'|')
}

fn streamable(ty: u8) -> bool {
    matches!(ty, b'$' | b'*' | b'~' | b'%' | b'>' | b'|')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        side: Side,
        limits: Limits,
        chunks: &[&[u8]],
    ) -> (Vec<Frame>, Result<(), RespError>, Framer) {
        let mut f = Framer::new(side, limits);
        let mut out = Vec::new();
        let mut res = Ok(());
        for c in chunks {
            res = f.feed(c, &mut |fr| out.push(fr.clone()));
            if res.is_err() {
                break;
            }
        }
        (out, res, f)
    }

    /// Frames of `input` fed whole; asserts every 2-way split and byte-at-a-time agree.
    fn frames_with(side: Side, limits: Limits, input: &[u8]) -> Result<Vec<Frame>, RespError> {
        let (whole, res, f) = run(side, limits, &[input]);
        if res.is_ok() {
            assert_eq!(f.offset(), input.len() as u64);
        }
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            let (out, r, _) = run(side, limits, &[a, b]);
            assert_eq!(out, whole, "split at {i}");
            assert_eq!(r, res, "split at {i}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let (out, r, _) = run(side, limits, &bytes);
        assert_eq!(out, whole, "byte at a time");
        assert_eq!(r, res, "byte at a time");
        res.map(|()| whole)
    }

    fn frames(side: Side, input: &[u8]) -> Result<Vec<Frame>, RespError> {
        frames_with(side, Limits::default(), input)
    }

    fn reply(input: &[u8]) -> Vec<Frame> {
        frames(Side::Reply, input).unwrap()
    }

    fn request(input: &[u8]) -> Vec<Frame> {
        frames(Side::Request, input)
            .unwrap_or_else(|e| panic!("{}: {e:?}", String::from_utf8_lossy(input)))
    }

    fn items(c: &Capture) -> Vec<Option<Vec<u8>>> {
        (0..CAPTURE_ITEMS)
            .map(|i| c.item(i).map(<[u8]>::to_vec))
            .take(c.count() as usize)
            .collect()
    }

    fn s(b: &[u8]) -> Option<Vec<u8>> {
        Some(b.to_vec())
    }

    /// `input` is one complete reply frame of `kind` whose items are `want`; also checks it is
    /// found again when followed by part of the next frame.
    fn one(input: &[u8], kind: FrameKind, count: u64, want: &[Option<&[u8]>]) -> Frame {
        let fs = reply(input);
        assert_eq!(fs.len(), 1, "{fs:?}");
        let f = fs[0].clone();
        assert_eq!(
            (f.start, f.end, f.kind),
            (0, input.len() as u64, kind),
            "{f:?}"
        );
        assert_eq!(f.capture.count(), count);
        let want: Vec<Option<Vec<u8>>> = want
            .iter()
            .map(|w| w.map(|w| w[..w.len().min(CAPTURE_LEN)].to_vec()))
            .collect();
        assert_eq!(items(&f.capture), want);
        // Padded with the start of the next frame: same frame, not at a boundary.
        let mut padded = input.to_vec();
        padded.extend_from_slice(b"*2\r\n$3\r\nab");
        let (out, res, fr) = run(Side::Reply, Limits::default(), &[&padded]);
        res.unwrap();
        assert_eq!(out, vec![f.clone()]);
        assert!(!fr.at_boundary());
        f
    }

    #[test]
    fn scalars() {
        let f = one(b"+OK\r\n", FrameKind::Simple, 1, &[Some(b"OK")]);
        assert_eq!(f.capture.item_len(0), Some(2));
        one(b"+\r\n", FrameKind::Simple, 1, &[Some(b"")]);
        one(
            b"-ERR unknown\r\n",
            FrameKind::Error,
            1,
            &[Some(b"ERR unknown")],
        );
        one(b":0\r\n", FrameKind::Number, 1, &[Some(b"0")]);
        one(
            b":-9223372036854775808\r\n",
            FrameKind::Number,
            1,
            &[Some(b"-9223372036854775808")],
        );
        one(
            b":9223372036854775807\r\n",
            FrameKind::Number,
            1,
            &[Some(b"9223372036854775807")],
        );
        let f = one(b"$5\r\nhello\r\n", FrameKind::Bulk, 1, &[Some(b"hello")]);
        assert_eq!(f.capture.item_len(0), Some(5));
        one(b"$0\r\n\r\n", FrameKind::Bulk, 1, &[Some(b"")]);
        one(b"$4\r\na\r\nb\r\n", FrameKind::Bulk, 1, &[Some(b"a\r\nb")]);
        one(b",3.14\r\n", FrameKind::Number, 1, &[Some(b"3.14")]);
        one(b",-inf\r\n", FrameKind::Number, 1, &[Some(b"-inf")]);
        one(b",1.5e-10\r\n", FrameKind::Number, 1, &[Some(b"1.5e-10")]);
        one(b",nan\r\n", FrameKind::Number, 1, &[Some(b"nan")]);
        one(b"#t\r\n", FrameKind::Number, 1, &[Some(b"t")]);
        one(b"#f\r\n", FrameKind::Number, 1, &[Some(b"f")]);
        one(
            b"(-3492890328409238509324850943850943825024385\r\n",
            FrameKind::Number,
            1,
            &[Some(b"-3492890328409238509324850943850")],
        );
        one(
            b"!21\r\nSYNTAX invalid syntax\r\n",
            FrameKind::Error,
            1,
            &[Some(b"SYNTAX invalid syntax")],
        );
        one(
            b"=15\r\ntxt:Some string\r\n",
            FrameKind::Bulk,
            1,
            &[Some(b"txt:Some string")],
        );
        one(b"_\r\n", FrameKind::Null, 0, &[]);
        one(b"$-1\r\n", FrameKind::Null, 0, &[]);
        one(b"*-1\r\n", FrameKind::Null, 0, &[]);
    }

    #[test]
    fn long_values_keep_a_prefix_and_full_length() {
        let v = vec![b'x'; 1000];
        let mut input = b"$1000\r\n".to_vec();
        input.extend_from_slice(&v);
        input.extend_from_slice(b"\r\n");
        let f = one(&input, FrameKind::Bulk, 1, &[Some(&v[..CAPTURE_LEN])]);
        assert_eq!(f.capture.item_len(0), Some(1000));
        let mut input = b"+".to_vec();
        input.extend_from_slice(&v);
        input.extend_from_slice(b"\r\n");
        let f = one(&input, FrameKind::Simple, 1, &[Some(&v[..CAPTURE_LEN])]);
        assert_eq!(f.capture.item_len(0), Some(1000));
    }

    #[test]
    fn aggregates() {
        let f = one(
            b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
            FrameKind::Aggregate,
            2,
            &[Some(b"pong"), Some(b"")],
        );
        assert_eq!(f.capture.item_len(0), Some(4));
        assert_eq!(f.capture.item_len(1), Some(0));
        assert_eq!(f.capture.item(2), None);
        one(b"*0\r\n", FrameKind::Aggregate, 0, &[]);
        one(b"%0\r\n", FrameKind::Aggregate, 0, &[]);
        one(
            b"*3\r\n*1\r\n:1\r\n$-1\r\n:7\r\n",
            FrameKind::Aggregate,
            3,
            &[None, None, Some(b"7")],
        );
        one(
            b"%2\r\n+a\r\n:1\r\n+b\r\n*2\r\n:1\r\n:2\r\n",
            FrameKind::Aggregate,
            4,
            &[Some(b"a"), Some(b"1"), Some(b"b"), None],
        );
        one(
            b"~2\r\n#t\r\n,1.0\r\n",
            FrameKind::Aggregate,
            2,
            &[Some(b"t"), Some(b"1.0")],
        );
        one(
            b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
            FrameKind::Push,
            3,
            &[Some(b"message"), Some(b"ch"), Some(b"hi")],
        );
        // Nested push is just an element.
        one(b"*1\r\n>1\r\n:1\r\n", FrameKind::Aggregate, 1, &[None]);
        // Only the first CAPTURE_ITEMS items are captured; count is all of them.
        let mut input = b"*10\r\n".to_vec();
        for i in 0..10 {
            input.extend_from_slice(format!(":{i}\r\n").as_bytes());
        }
        let f = one(
            &input,
            FrameKind::Aggregate,
            10,
            &[
                Some(b"0"),
                Some(b"1"),
                Some(b"2"),
                Some(b"3"),
                Some(b"4"),
                Some(b"5"),
                Some(b"6"),
                Some(b"7"),
            ],
        );
        assert_eq!(f.capture.item(8), None);
        assert_eq!(f.capture.item_len(8), None);
    }

    #[test]
    fn attributes_fold_into_the_next_value() {
        // Top level: start is the attribute's, kind/capture the value's.
        let input = b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n";
        one(
            input,
            FrameKind::Aggregate,
            2,
            &[Some(b"2039123"), Some(b"9543892")],
        );
        one(
            b"|1\r\n+a\r\n+b\r\n+OK\r\n",
            FrameKind::Simple,
            1,
            &[Some(b"OK")],
        );
        one(
            b"|0\r\n|1\r\n+a\r\n+b\r\n>1\r\n+x\r\n",
            FrameKind::Push,
            1,
            &[Some(b"x")],
        );
        // Inside an aggregate: not an element, not counted.
        one(
            b"*2\r\n|1\r\n+ttl\r\n:3600\r\n+one\r\n+two\r\n",
            FrameKind::Aggregate,
            2,
            &[Some(b"one"), Some(b"two")],
        );
        one(b"*1\r\n:1\r\n", FrameKind::Aggregate, 1, &[Some(b"1")]);
        // An attribute whose key carries an attribute.
        one(
            b"|1\r\n|1\r\n+a\r\n+b\r\n+k\r\n+v\r\n:5\r\n",
            FrameKind::Number,
            1,
            &[Some(b"5")],
        );
        // A lone attribute is not a frame.
        let (out, res, f) = run(Side::Reply, Limits::default(), &[b"|1\r\n+a\r\n+b\r\n"]);
        res.unwrap();
        assert!(out.is_empty());
        assert!(!f.at_boundary());
    }

    #[test]
    fn streamed() {
        let f = one(
            b"$?\r\n;4\r\nHell\r\n;6\r\no worl\r\n;1\r\nd\r\n;0\r\n",
            FrameKind::Bulk,
            1,
            &[Some(b"Hello world")],
        );
        assert_eq!(f.capture.item_len(0), Some(11));
        one(b"$?\r\n;0\r\n", FrameKind::Bulk, 1, &[Some(b"")]);
        one(
            b"*?\r\n:1\r\n:2\r\n:3\r\n.\r\n",
            FrameKind::Aggregate,
            3,
            &[Some(b"1"), Some(b"2"), Some(b"3")],
        );
        one(b"*?\r\n.\r\n", FrameKind::Aggregate, 0, &[]);
        one(
            b"%?\r\n+a\r\n:1\r\n+b\r\n:2\r\n.\r\n",
            FrameKind::Aggregate,
            4,
            &[Some(b"a"), Some(b"1"), Some(b"b"), Some(b"2")],
        );
        one(
            b"~?\r\n*?\r\n.\r\n$?\r\n;2\r\nab\r\n;0\r\n.\r\n",
            FrameKind::Aggregate,
            2,
            &[None, Some(b"ab")],
        );
        one(b">?\r\n+m\r\n.\r\n", FrameKind::Push, 1, &[Some(b"m")]);
        one(
            b"|?\r\n+a\r\n+b\r\n.\r\n:1\r\n",
            FrameKind::Number,
            1,
            &[Some(b"1")],
        );
        // A long streamed string: capture is the concatenated prefix.
        let mut input = b"$?\r\n".to_vec();
        for _ in 0..10 {
            input.extend_from_slice(b";5\r\n01234\r\n");
        }
        input.extend_from_slice(b";0\r\n");
        let f = one(
            &input,
            FrameKind::Bulk,
            1,
            &[Some(b"01234012340123401234012340123401")],
        );
        assert_eq!(f.capture.item_len(0), Some(50));
    }

    #[test]
    fn several_frames_and_offsets() {
        let input = b"+OK\r\n:1\r\n*1\r\n$1\r\nx\r\n_\r\n";
        let fs = reply(input);
        let spans: Vec<_> = fs.iter().map(|f| (f.start, f.end, f.kind)).collect();
        assert_eq!(
            spans,
            vec![
                (0, 5, FrameKind::Simple),
                (5, 9, FrameKind::Number),
                (9, 20, FrameKind::Aggregate),
                (20, 23, FrameKind::Null),
            ]
        );
    }

    #[test]
    fn reply_errors() {
        let e = |input: &[u8]| {
            frames(Side::Reply, input)
                .err()
                .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(input)))
        };
        assert_eq!(e(b"?"), RespError::BadType(b'?'));
        assert_eq!(e(b"PONG\r\n"), RespError::BadType(b'P'));
        assert_eq!(e(b".\r\n"), RespError::BadType(b'.'));
        assert_eq!(e(b"*1\r\n.\r\n"), RespError::BadType(b'.'));
        assert_eq!(e(b"$?\r\n+x\r\n"), RespError::BadType(b'+'));
        assert_eq!(e(b":1x\r\n"), RespError::BadNumber);
        assert_eq!(e(b":\r\n"), RespError::BadNumber);
        assert_eq!(e(b":-\r\n"), RespError::BadNumber);
        assert_eq!(e(b":9223372036854775808\r\n"), RespError::BadNumber);
        assert_eq!(e(b":-9223372036854775809\r\n"), RespError::BadNumber);
        assert_eq!(e(b"$-2\r\n"), RespError::BadNumber);
        assert_eq!(e(b"%-1\r\n"), RespError::BadNumber);
        assert_eq!(e(b"!-1\r\n"), RespError::BadNumber);
        assert_eq!(e(b"$1?\r\n"), RespError::BadNumber);
        assert_eq!(e(b"$?1\r\n"), RespError::BadNumber);
        assert_eq!(e(b":?\r\n"), RespError::BadNumber);
        assert_eq!(e(b"=?\r\n"), RespError::BadNumber);
        assert_eq!(e(b"#x\r\n"), RespError::BadNumber);
        assert_eq!(e(b"#tt\r\n"), RespError::BadNumber);
        assert_eq!(e(b"#\r\n"), RespError::BadNumber);
        assert_eq!(e(b",1.0z\r\n"), RespError::BadNumber);
        assert_eq!(e(b"(12a\r\n"), RespError::BadNumber);
        assert_eq!(e(b"$?\r\n;-1\r\n"), RespError::BadNumber);
        assert_eq!(
            e(b"$000000000000000000000000000000000000000000000000000000000000001\r\n"),
            RespError::LineTooLong
        );
        assert_eq!(e(b"$3\r\nabcd\r\n"), RespError::ExpectedCrlf);
        assert_eq!(e(b"$3\r\nabc\rx"), RespError::ExpectedCrlf);
        assert_eq!(e(b"+OK\rx"), RespError::ExpectedCrlf);
        assert_eq!(e(b":1\rx"), RespError::ExpectedCrlf);
        assert_eq!(e(b"_x"), RespError::ExpectedCrlf);
        assert_eq!(e(b"_\rx"), RespError::ExpectedCrlf);
        let deep = b"*1\r\n".repeat(65);
        assert_eq!(e(&deep), RespError::TooDeep);
        let limits = Limits {
            max_depth: 64,
            max_line: 8,
        };
        assert_eq!(
            frames_with(Side::Reply, limits, b",1234567890\r\n"),
            Err(RespError::LineTooLong)
        );
        assert_eq!(
            frames_with(Side::Reply, limits, b"$123456\r\n"),
            Err(RespError::LineTooLong)
        );
        // Simple strings are not bounded.
        assert_eq!(
            frames_with(Side::Reply, limits, b"+1234567890\r\n")
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn depth_limit_is_exact() {
        let mut ok = b"*1\r\n".repeat(64);
        ok.extend_from_slice(b":1\r\n");
        assert_eq!(reply(&ok).len(), 1);
        let limits = Limits {
            max_depth: 0,
            max_line: 1024,
        };
        assert_eq!(
            frames_with(Side::Reply, limits, b"*1\r\n:1\r\n"),
            Err(RespError::TooDeep)
        );
        assert_eq!(
            frames_with(Side::Reply, limits, b"*0\r\n").unwrap().len(),
            1
        );
    }

    #[test]
    fn very_deep_nesting_is_too_deep_not_a_stack_overflow() {
        let deep = b"*1\r\n".repeat(100_000);
        let (_, res, f) = run(Side::Reply, Limits::default(), &[&deep]);
        assert_eq!(res, Err(RespError::TooDeep));
        assert_eq!(f.error(), Some(&RespError::TooDeep));
    }

    #[test]
    fn poisoned_after_error() {
        let mut f = Framer::new(Side::Reply, Limits::default());
        let mut n = 0;
        assert_eq!(
            f.feed(b"+OK\r\n?", &mut |_| n += 1),
            Err(RespError::BadType(b'?'))
        );
        assert_eq!(
            f.feed(b"+OK\r\n", &mut |_| n += 1),
            Err(RespError::BadType(b'?'))
        );
        assert_eq!(n, 1);
        assert_eq!(f.skippable(), 0);
    }

    fn cmd(input: &[u8], want: &[&[u8]]) -> Frame {
        let fs = request(input);
        assert_eq!(fs.len(), 1, "{fs:?}");
        let f = fs[0].clone();
        assert_eq!(
            (f.start, f.end, f.kind),
            (0, input.len() as u64, FrameKind::Command)
        );
        assert_eq!(f.capture.count(), want.len() as u64);
        let want: Vec<_> = want
            .iter()
            .take(CAPTURE_ITEMS)
            .map(|w| s(&w[..w.len().min(CAPTURE_LEN)]))
            .collect();
        assert_eq!(items(&f.capture), want);
        f
    }

    #[test]
    fn inline_commands() {
        cmd(b"PING\r\n", &[b"PING"]);
        cmd(b"PING\n", &[b"PING"]);
        cmd(b"ping\r\n", &[b"ping"]);
        cmd(b"SET a b\r\n", &[b"SET", b"a", b"b"]);
        cmd(b"  SET\ta   b  \r\n", &[b"SET", b"a", b"b"]);
        cmd(
            b"SET k \"a b\\r\\n\\x41\\x4\\q\"\r\n",
            &[b"SET", b"k", b"a b\r\nAx4q"],
        );
        cmd(b"SET k 'it\\'s \\n'\r\n", &[b"SET", b"k", b"it's \\n"]);
        cmd(b"SET k a\"b c\" d\r\n", &[b"SET", b"k", b"ab c", b"d"]);
        cmd(b"SET k \"\"\r\n", &[b"SET", b"k", b""]);
        // Only the CR right before the LF is stripped; another one separates words.
        cmd(b"a\rb\r\r\n", &[b"a", b"b"]);
        // A NUL ends the C string Redis splits.
        cmd(b"GET k\0 ignored \"\n", &[b"GET", b"k"]);
        // Not multibulk unless the very first byte is `*`.
        cmd(b" *1\r\n", &[b"*1"]);
        cmd(b"$3\r\n", &[b"$3"]);
        let f = cmd(
            b"a b c d e f g h i j\n",
            &[b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i", b"j"],
        );
        assert_eq!(f.capture.item(8), None);
        let long = vec![b'v'; 100];
        let mut input = b"SET k ".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\r\n");
        let f = cmd(&input, &[b"SET", b"k", &long]);
        assert_eq!(f.capture.item_len(2), Some(100));
        // Empty lines are consumed and ignored.
        assert!(request(b"\r\n").is_empty());
        assert!(request(b"\n").is_empty());
        assert!(request(b"  \t \r\n").is_empty());
        assert!(request(b"\0abc\r\n").is_empty());
        let fs = request(b"\r\nPING\r\n\nPING\n");
        let spans: Vec<_> = fs.iter().map(|f| (f.start, f.end)).collect();
        assert_eq!(spans, vec![(2, 8), (9, 14)]);
    }

    #[test]
    fn multibulk_commands() {
        cmd(b"*1\r\n$4\r\nPING\r\n", &[b"PING"]);
        let f = cmd(
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$6\r\na\r\nb\r\n\r\n",
            &[b"SET", b"k", b"a\r\nb\r\n"],
        );
        assert_eq!(f.capture.item_len(2), Some(6));
        cmd(b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n", &[b"GET", b""]);
        // Zero or negative counts: consumed, nothing emitted.
        assert!(request(b"*0\r\n").is_empty());
        assert!(request(b"*-1\r\n").is_empty());
        let fs = request(b"*0\r\n*1\r\n$4\r\nPING\r\nPING\r\n*-5\r\n");
        let spans: Vec<_> = fs.iter().map(|f| (f.start, f.end)).collect();
        assert_eq!(spans, vec![(4, 18), (18, 24)]);
        let (_, res, f) = run(Side::Request, Limits::default(), &[b"*0\r\n"]);
        res.unwrap();
        assert!(f.at_boundary());
    }

    #[test]
    fn request_errors() {
        let e = |input: &[u8]| {
            frames(Side::Request, input)
                .err()
                .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(input)))
        };
        assert_eq!(e(b"*1\r\n+PING\r\n"), RespError::BadRequest);
        assert_eq!(e(b"*1\r\n*1\r\n"), RespError::BadRequest);
        assert_eq!(e(b"*1\r\n$-1\r\n"), RespError::BadRequest);
        assert_eq!(e(b"*2147483648\r\n"), RespError::BadRequest);
        assert_eq!(e(b"*?\r\n"), RespError::BadNumber);
        assert_eq!(e(b"*x\r\n"), RespError::BadNumber);
        assert_eq!(e(b"*1\r\n$x\r\n"), RespError::BadNumber);
        assert_eq!(e(b"*1\r\n$1\r\nab\r\n"), RespError::ExpectedCrlf);
        assert_eq!(e(b"*1\n"), RespError::BadNumber);
        assert_eq!(e(b"SET k \"abc\r\n"), RespError::BadRequest);
        assert_eq!(e(b"SET k 'abc\r\n"), RespError::BadRequest);
        assert_eq!(e(b"SET k \"a\"b\r\n"), RespError::BadRequest);
        assert_eq!(e(b"SET k a\"b c\"d\r\n"), RespError::BadRequest);
        assert_eq!(e(b"SET k \"a\\\r\n"), RespError::BadRequest);
        let limits = Limits {
            max_depth: 64,
            max_line: 10,
        };
        assert_eq!(
            frames_with(Side::Request, limits, b"SET key value\r\n"),
            Err(RespError::LineTooLong)
        );
        assert_eq!(
            frames_with(Side::Request, limits, b"SET k v\r\n")
                .unwrap()
                .len(),
            1
        );
        let limits = Limits {
            max_depth: 64,
            max_line: 5,
        };
        assert_eq!(
            frames_with(Side::Request, limits, b"a\"b\"c\n"),
            Err(RespError::BadRequest)
        );
        assert_eq!(
            frames_with(Side::Request, limits, b"abcde\"b\"c\n"),
            Err(RespError::LineTooLong)
        );
    }

    #[test]
    fn skip_leaves_the_capture_prefix_and_the_crlf() {
        let mut f = Framer::new(Side::Reply, Limits::default());
        let mut out = Vec::new();
        f.feed(b"*2\r\n$100\r\n", &mut |fr| out.push(fr.clone()))
            .unwrap();
        // The first CAPTURE_LEN (16) bytes are wanted for the capture.
        assert_eq!(f.skippable(), 0);
        f.feed(&[b'a'; 10], &mut |fr| out.push(fr.clone())).unwrap();
        assert_eq!(f.skippable(), 0);
        f.feed(&[b'b'; 22], &mut |fr| out.push(fr.clone())).unwrap();
        assert_eq!(f.skippable(), 68);
        f.skip(60);
        assert_eq!(f.skippable(), 8);
        f.skip(100); // clamped
        assert_eq!(f.skippable(), 0);
        f.feed(b"\r\n$3\r\n", &mut |fr| out.push(fr.clone()))
            .unwrap();
        // Second item: also captured.
        assert_eq!(f.skippable(), 0);
        f.feed(b"xyz\r\n", &mut |fr| out.push(fr.clone())).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].end, f.offset());
        assert_eq!(f.offset(), 4 + 6 + 100 + 2 + 4 + 5);
        let mut want = vec![b'a'; 10];
        want.extend_from_slice(&[b'b'; CAPTURE_LEN - 10]);
        assert_eq!(out[0].capture.item(0), Some(&want[..]));
        assert_eq!(out[0].capture.item_len(0), Some(100));
        assert_eq!(out[0].capture.item(1), Some(&b"xyz"[..]));

        // Nested or ninth items are not captured: skippable at once.
        let mut f = Framer::new(Side::Reply, Limits::default());
        f.feed(b"*1\r\n*1\r\n$1000\r\n", &mut |_| {}).unwrap();
        assert_eq!(f.skippable(), 1000);
        let mut f = Framer::new(Side::Request, Limits::default());
        f.feed(b"*9\r\n", &mut |_| {}).unwrap();
        for _ in 0..8 {
            f.feed(b"$1\r\nx\r\n", &mut |_| {}).unwrap();
        }
        f.feed(b"$1000\r\n", &mut |_| {}).unwrap();
        assert_eq!(f.skippable(), 1000);
        f.skip(1000);
        let mut n = 0;
        f.feed(b"\r\n", &mut |fr| {
            n += 1;
            assert_eq!(fr.capture.count(), 9);
        })
        .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn boundary_tracking() {
        let mut f = Framer::new(Side::Reply, Limits::default());
        assert!(f.at_boundary());
        f.feed(b"+O", &mut |_| {}).unwrap();
        assert!(!f.at_boundary());
        f.feed(b"K\r", &mut |_| {}).unwrap();
        assert!(!f.at_boundary());
        f.feed(b"\n", &mut |_| {}).unwrap();
        assert!(f.at_boundary());
        let mut f = Framer::new(Side::Request, Limits::default());
        f.feed(b"PI", &mut |_| {}).unwrap();
        assert!(!f.at_boundary());
        f.feed(b"NG\r\n", &mut |_| {}).unwrap();
        assert!(f.at_boundary());
    }
}
