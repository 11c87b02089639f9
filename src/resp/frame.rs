//! What the framer reports: the frame types, the [`Capture`] of a frame's first items, the
//! [`Side`] a framer reads and its [`Limits`]. Apart from the framer so that code that reads
//! frames (command.rs, session/) needs only this file; the framer fills captures through the
//! `pub(super)` items here.

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
    pub(super) count: u64,
    /// Bit i set: item i is a scalar (its len/data are meaningful).
    present: u8,
    pub(super) lens: [u64; CAPTURE_ITEMS],
    filled: [u8; CAPTURE_ITEMS],
    data: [[u8; CAPTURE_LEN]; CAPTURE_ITEMS],
}

impl Capture {
    pub(super) const EMPTY: Capture = Capture {
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
    pub(super) fn clear(&mut self) {
        self.count = 0;
        self.present = 0;
    }

    fn has(&self, i: usize) -> bool {
        i < CAPTURE_ITEMS && (self.present >> i) & 1 == 1
    }

    /// Marks slot `s` as a scalar of (initial) length `len`.
    pub(super) fn open(&mut self, s: usize, len: u64) {
        if let (Some(l), Some(f)) = (self.lens.get_mut(s), self.filled.get_mut(s)) {
            *l = len;
            *f = 0;
            self.present |= 1 << s;
        }
    }

    pub(super) fn add_len(&mut self, s: usize, n: u64) {
        if let Some(l) = self.lens.get_mut(s) {
            *l = l.saturating_add(n);
        }
    }

    /// Slot `s` still wants prefix bytes.
    pub(super) fn wants(&self, s: usize) -> bool {
        self.filled
            .get(s)
            .is_some_and(|&f| usize::from(f) < CAPTURE_LEN)
    }

    /// Appends as much of `bytes` as fits in slot `s`'s prefix.
    pub(super) fn push(&mut self, s: usize, bytes: &[u8]) {
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
