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
        if is_any(name, BLOCKING) {
            return if in_multi {
                Command::Plain
            } else {
                Command::Blocking
            };
        }
        if is(name, b"XREAD") || is(name, b"XREADGROUP") {
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
        if is(name, b"HELLO") {
            let version = match capture.item(1) {
                None => None,
                Some(b"2") => Some(2),
                Some(b"3") => Some(3),
                Some(_) => Some(0), // unsupported: Redis answers NOPROTO, protocol unchanged
            };
            return Command::Hello(version);
        }
        if is(name, b"CLIENT") && is(capture.item(1), b"REPLY") && capture.count() == 3 {
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
