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
const PUBSUB: &[&[u8]] = &[
    b"SUBSCRIBE",
    b"PSUBSCRIBE",
    b"SSUBSCRIBE",
    b"UNSUBSCRIBE",
    b"PUNSUBSCRIBE",
    b"SUNSUBSCRIBE",
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
        if is_any(name, PUBSUB) {
            return Command::Pubsub;
        }
        if is(name, b"MULTI") {
            return Command::Multi;
        }
        if is(name, b"EXEC") || is(name, b"DISCARD") {
            return Command::EndMulti;
        }
        if is(name, b"MONITOR") {
            return Command::Monitor;
        }
        if is(name, b"QUIT") {
            return Command::Quit;
        }
        if is(name, b"RESET") {
            return Command::Reset;
        }
        if is(name, b"SYNC") || is(name, b"PSYNC") {
            return Command::Replication;
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
