//! What a client command does to the connection's reply accounting.
//!
//! Only the few commands that change how many replies come back, or whether a PING is safe,
//! are told apart; everything else is `Plain` (exactly one reply).

use crate::resp::Capture;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    On,
    Off,
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// One reply, promptly.
    Plain,
    /// One reply, possibly after a long wait (BLPOP, XREAD BLOCK, WAIT…): a PING sent behind it
    /// is answered only after it.
    Blocking,
    Multi,
    /// EXEC or DISCARD.
    EndMulti,
    /// (S|P)(UN)SUBSCRIBE: confirmations are pushes (RESP3) or pubsub-shaped arrays (RESP2),
    /// never ordinary replies.
    Pubsub,
    /// After its +OK the connection carries a stream we do not follow.
    Monitor,
    /// CLIENT REPLY ON|OFF|SKIP.
    ClientReply(ReplyMode),
    /// HELLO [protover]: the protocol changes when its reply is not an error.
    Hello(Option<u8>),
    /// RESET: back to RESP2, no MULTI, no subscriptions, replies on.
    Reset,
    /// Replication streams (SYNC, PSYNC): not request/reply any more.
    Replication,
    /// QUIT: Redis answers +OK and closes; that close is the client's wish, not a dead link.
    Quit,
}

const BLOCKING: &[&[u8]] = &[
    b"BLPOP",
    b"BRPOP",
    b"BRPOPLPUSH",
    b"BLMOVE",
    b"BLMPOP",
    b"BZPOPMIN",
    b"BZPOPMAX",
    b"BZMPOP",
    b"WAIT",
    b"WAITAOF",
];
/// Commands recognised by name alone.
const BY_NAME: &[(&[u8], Command)] = &[
    (b"SUBSCRIBE", Command::Pubsub),
    (b"PSUBSCRIBE", Command::Pubsub),
    (b"SSUBSCRIBE", Command::Pubsub),
    (b"UNSUBSCRIBE", Command::Pubsub),
    (b"PUNSUBSCRIBE", Command::Pubsub),
    (b"SUNSUBSCRIBE", Command::Pubsub),
    (b"MULTI", Command::Multi),
    (b"EXEC", Command::EndMulti),
    (b"DISCARD", Command::EndMulti),
    (b"MONITOR", Command::Monitor),
    (b"QUIT", Command::Quit),
    (b"RESET", Command::Reset),
    (b"SYNC", Command::Replication),
    (b"PSYNC", Command::Replication),
];

/// Names classify looks at besides BLOCKING and BY_NAME.
const XREAD: &[u8] = b"XREAD";
const XREADGROUP: &[u8] = b"XREADGROUP";
const HELLO: &[u8] = b"HELLO";
const CLIENT: &[u8] = b"CLIENT";
const OTHERS: &[&[u8]] = &[XREAD, XREADGROUP, HELLO, CLIENT];

/// For each first letter A–Z, a bit per name length (< 16) of the names above: a command whose
/// (first letter, length) is not in it is Plain without comparing names (GET, SET, HGET…).
const SPECIAL_SHAPES: [u16; 26] = special_shapes();

#[allow(clippy::indexing_slicing)] // evaluated at compile time: an index out of range fails the build
const fn special_shapes() -> [u16; 26] {
    let mut shapes = [0u16; 26];
    let mut i = 0;
    while i < BLOCKING.len() {
        mark(&mut shapes, BLOCKING[i]);
        i += 1;
    }
    i = 0;
    while i < BY_NAME.len() {
        mark(&mut shapes, BY_NAME[i].0);
        i += 1;
    }
    i = 0;
    while i < OTHERS.len() {
        mark(&mut shapes, OTHERS[i]);
        i += 1;
    }
    shapes
}

#[allow(clippy::indexing_slicing)] // compile time only, see special_shapes
const fn mark(shapes: &mut [u16; 26], name: &[u8]) {
    assert!(name.len() < 16 && name[0].is_ascii_uppercase());
    shapes[(name[0] - b'A') as usize] |= 1 << name.len();
}

/// False when no name classify knows has this word's first letter and length.
fn may_be_special(word: &[u8]) -> bool {
    let Some(first) = word.first() else {
        return false;
    };
    let letter = first.to_ascii_uppercase().wrapping_sub(b'A');
    word.len() < 16
        && SPECIAL_SHAPES
            .get(usize::from(letter))
            .is_some_and(|lengths| lengths >> word.len() & 1 == 1)
}

fn is(word: Option<&[u8]>, name: &[u8]) -> bool {
    word.is_some_and(|w| w.eq_ignore_ascii_case(name))
}

fn is_any(word: Option<&[u8]>, names: &[&[u8]]) -> bool {
    names.iter().any(|n| is(word, n))
}

impl Command {
    /// Classify a command from its captured words. `in_multi`: inside MULTI nothing blocks.
    pub fn classify(capture: &Capture, in_multi: bool) -> Command {
        let name = capture.item(0);
        if !name.is_some_and(may_be_special) {
            return Command::Plain;
        }
        if is_any(name, BLOCKING) {
            return if in_multi {
                Command::Plain
            } else {
                Command::Blocking
            };
        }
        if is(name, XREAD) || is(name, XREADGROUP) {
            if in_multi {
                return Command::Plain;
            }
            let captured = (1..crate::resp::CAPTURE_ITEMS).any(|i| is(capture.item(i), b"BLOCK"));
            // BLOCK past the captured words: assume blocking, the safe side (a keepalive may
            // then queue behind it, which is harmless; a missed block would time a PING out).
            let beyond = capture.count() > crate::resp::CAPTURE_ITEMS as u64;
            return if captured || beyond {
                Command::Blocking
            } else {
                Command::Plain
            };
        }
        if let Some(&(_, command)) = BY_NAME.iter().find(|(n, _)| is(name, n)) {
            return command;
        }
        if is(name, HELLO) {
            let version = match capture.item(1) {
                None => None,
                Some(b"2") => Some(2),
                Some(b"3") => Some(3),
                Some(_) => Some(0), // unsupported: Redis answers NOPROTO, protocol unchanged
            };
            return Command::Hello(version);
        }
        if is(name, CLIENT) && is(capture.item(1), b"REPLY") && capture.count() == 3 {
            let arg = capture.item(2);
            if is(arg, b"ON") {
                return Command::ClientReply(ReplyMode::On);
            }
            if is(arg, b"OFF") {
                return Command::ClientReply(ReplyMode::Off);
            }
            if is(arg, b"SKIP") {
                return Command::ClientReply(ReplyMode::Skip);
            }
        }
        Command::Plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::{Framer, Limits, Side};

    fn classify(line: &str, in_multi: bool) -> Command {
        let mut framer = Framer::new(Side::Request, Limits::default());
        let mut frames = Vec::new();
        framer
            .feed(format!("{line}\r\n").as_bytes(), &mut |f| {
                frames.push(f.clone())
            })
            .unwrap();
        assert_eq!(frames.len(), 1, "{line}");
        Command::classify(&frames[0].capture, in_multi)
    }

    #[test]
    fn every_known_name_passes_the_shape_filter() {
        let names = BLOCKING
            .iter()
            .copied()
            .chain(BY_NAME.iter().map(|(n, _)| *n))
            .chain(OTHERS.iter().copied());
        for name in names {
            assert!(may_be_special(name), "{name:?}");
            assert!(may_be_special(&name.to_ascii_lowercase()), "{name:?}");
        }
        for plain in [
            &b"GET"[..],
            b"SET",
            b"HGETALL",
            b"",
            b"@",
            b"{",
            b"BLPOPXXXXXXXXXXXX",
        ] {
            assert!(!may_be_special(plain), "{plain:?}");
        }
    }

    #[test]
    fn ordinary_commands_are_plain() {
        for line in [
            "GET a",
            "SET a b",
            "PING",
            "CLIENT LIST",
            "CLIENT REPLY",
            "HGETALL h",
            "XREAD STREAMS s 0",
        ] {
            assert_eq!(classify(line, false), Command::Plain, "{line}");
        }
    }

    #[test]
    fn blocking_commands_block_except_inside_multi() {
        for line in [
            "BLPOP q 0",
            "brpop q 1",
            "BLMOVE a b LEFT RIGHT 0",
            "BZPOPMIN z 0",
            "WAIT 1 0",
            "XREAD BLOCK 0 STREAMS s $",
            "XREADGROUP GROUP g c COUNT 1 BLOCK 10 STREAMS s >",
        ] {
            assert_eq!(classify(line, false), Command::Blocking, "{line}");
            assert_eq!(classify(line, true), Command::Plain, "{line} in MULTI");
        }
        // BLOCK beyond the captured words: assumed blocking.
        assert_eq!(
            classify("XREAD COUNT 1 STREAMS a b c d e f $ $ $ $ $ $", false),
            Command::Blocking
        );
    }

    #[test]
    fn mode_changing_commands() {
        assert_eq!(classify("subscribe a b", false), Command::Pubsub);
        assert_eq!(classify("SUNSUBSCRIBE", false), Command::Pubsub);
        assert_eq!(classify("MULTI", false), Command::Multi);
        assert_eq!(classify("exec", false), Command::EndMulti);
        assert_eq!(classify("DISCARD", false), Command::EndMulti);
        assert_eq!(classify("MONITOR", false), Command::Monitor);
        assert_eq!(classify("QUIT", false), Command::Quit);
        assert_eq!(classify("RESET", false), Command::Reset);
        assert_eq!(classify("PSYNC ? -1", false), Command::Replication);
        assert_eq!(classify("HELLO", false), Command::Hello(None));
        assert_eq!(classify("HELLO 3 AUTH u p", false), Command::Hello(Some(3)));
        assert_eq!(classify("hello 2", false), Command::Hello(Some(2)));
        assert_eq!(classify("HELLO 4", false), Command::Hello(Some(0)));
        assert_eq!(
            classify("client reply off", false),
            Command::ClientReply(ReplyMode::Off)
        );
        assert_eq!(
            classify("CLIENT REPLY SKIP", false),
            Command::ClientReply(ReplyMode::Skip)
        );
        assert_eq!(
            classify("CLIENT REPLY ON", false),
            Command::ClientReply(ReplyMode::On)
        );
        assert_eq!(
            classify("CLIENT REPLY MAYBE", false),
            Command::Plain,
            "an error reply, still one"
        );
    }
}
