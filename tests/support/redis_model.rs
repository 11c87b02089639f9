//! A small model of Redis 7 as the filter must understand it: RESP2/RESP3, subscribed mode,
//! MULTI/EXEC, CLIENT REPLY OFF/ON, blocked commands; it answers frame by frame in wire order.
//! Shared by the mode transparency property test and the session fuzz target.
#![allow(dead_code, clippy::unwrap_used, clippy::panic, clippy::unreachable)]

use std::collections::BTreeSet;

/// Redis's replies to the filter's PING (`redis_idle_guard::session::PING`).
pub const PONG: &[u8] = b"$16\r\nredis-idle-guard\r\n";
pub const PONG_RESP2_SUB: &[u8] = b"*2\r\n$4\r\npong\r\n$16\r\nredis-idle-guard\r\n";

#[derive(Debug, Clone, Copy)]
pub enum Cmd {
    Get,
    Incr,
    Ping,
    Blpop,
    Subscribe(u8),
    Unsubscribe(u8),
    Multi,
    Exec,
    ReplyOff,
    ReplyOn,
}

pub fn bulk(s: &str) -> Vec<u8> {
    format!("${}\r\n{s}\r\n", s.len()).into_bytes()
}

/// The subset of Redis 7 the filter must model, replying frame by frame in wire order.
#[derive(Default)]
pub struct Redis {
    pub resp3: bool,
    pub channels: BTreeSet<u8>,
    pub multi: Option<Vec<Vec<u8>>>,
    pub reply_off: bool,
    pub counter: i64,
}

impl Redis {
    pub fn subscribed(&self) -> bool {
        !self.channels.is_empty()
    }

    pub fn pubsub(&self, kind: &str, ch: u8) -> Vec<u8> {
        let head = if self.resp3 { ">3\r\n" } else { "*3\r\n" };
        let mut f = head.as_bytes().to_vec();
        f.extend(bulk(kind));
        f.extend(bulk(&format!("ch{ch}")));
        f.extend(format!(":{}\r\n", self.channels.len()).into_bytes());
        f
    }

    pub fn message(&self) -> Option<Vec<u8>> {
        let ch = *self.channels.iter().next()?;
        let head = if self.resp3 { ">3\r\n" } else { "*3\r\n" };
        let mut f = head.as_bytes().to_vec();
        f.extend(bulk("message"));
        f.extend(bulk(&format!("ch{ch}")));
        f.extend(bulk("hello"));
        Some(f)
    }

    /// The filter's PING.
    pub fn filter_ping(&self) -> Vec<u8> {
        assert!(
            self.multi.is_none() && !self.reply_off,
            "the filter pinged when it must not"
        );
        if self.subscribed() && !self.resp3 {
            PONG_RESP2_SUB.to_vec()
        } else {
            PONG.to_vec()
        }
    }

    /// Frames Redis emits for one client command.
    pub fn client(&mut self, c: Cmd) -> Vec<Vec<u8>> {
        if self.reply_off {
            if matches!(c, Cmd::ReplyOn) {
                self.reply_off = false;
                return vec![b"+OK\r\n".to_vec()];
            }
            // Still executed, no reply.
            if let Cmd::Incr = c {
                self.counter += 1;
            }
            return vec![];
        }
        let restricted = self.subscribed() && !self.resp3;
        if restricted && !matches!(c, Cmd::Subscribe(_) | Cmd::Unsubscribe(_) | Cmd::Ping) {
            return vec![b"-ERR Can't execute: only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n".to_vec()];
        }
        if let Some(queued) = self.multi.as_mut() {
            match c {
                Cmd::Exec => {
                    let queued = self.multi.take().unwrap();
                    let mut f = format!("*{}\r\n", queued.len()).into_bytes();
                    for r in queued {
                        f.extend(r);
                    }
                    return vec![f];
                }
                Cmd::Multi => return vec![b"-ERR MULTI calls can not be nested\r\n".to_vec()],
                _ => {
                    let r = match c {
                        Cmd::Get => b"$-1\r\n".to_vec(),
                        Cmd::Incr => {
                            self.counter += 1;
                            format!(":{}\r\n", self.counter).into_bytes()
                        }
                        Cmd::Ping => b"+PONG\r\n".to_vec(),
                        // BLPOP inside MULTI does not block: an empty list gives a null.
                        Cmd::Blpop => b"*-1\r\n".to_vec(),
                        _ => unreachable!("generator keeps mode changes out of MULTI"),
                    };
                    queued.push(r);
                    return vec![b"+QUEUED\r\n".to_vec()];
                }
            }
        }
        match c {
            Cmd::Get => vec![b"$3\r\nabc\r\n".to_vec()],
            Cmd::Incr => {
                self.counter += 1;
                vec![format!(":{}\r\n", self.counter).into_bytes()]
            }
            Cmd::Ping if restricted => vec![b"*2\r\n$4\r\npong\r\n$0\r\n\r\n".to_vec()],
            Cmd::Ping => vec![b"+PONG\r\n".to_vec()],
            Cmd::Blpop => vec![b"*2\r\n$1\r\nq\r\n$1\r\nv\r\n".to_vec()],
            Cmd::Subscribe(ch) => {
                self.channels.insert(ch);
                vec![self.pubsub("subscribe", ch)]
            }
            Cmd::Unsubscribe(ch) => {
                self.channels.remove(&ch);
                vec![self.pubsub("unsubscribe", ch)]
            }
            Cmd::Multi => {
                self.multi = Some(Vec::new());
                vec![b"+OK\r\n".to_vec()]
            }
            Cmd::Exec => vec![b"-ERR EXEC without MULTI\r\n".to_vec()],
            Cmd::ReplyOff => {
                self.reply_off = true;
                vec![]
            }
            Cmd::ReplyOn => vec![b"+OK\r\n".to_vec()],
        }
    }
}

pub fn encode(c: Cmd) -> Vec<u8> {
    match c {
        Cmd::Get => cmd(&["GET", "k"]),
        Cmd::Incr => cmd(&["INCR", "n"]),
        Cmd::Ping => cmd(&["PING"]),
        Cmd::Blpop => cmd(&["BLPOP", "q", "0"]),
        Cmd::Subscribe(ch) => cmd(&["SUBSCRIBE", &format!("ch{ch}")]),
        Cmd::Unsubscribe(ch) => cmd(&["UNSUBSCRIBE", &format!("ch{ch}")]),
        Cmd::Multi => cmd(&["MULTI"]),
        Cmd::Exec => cmd(&["EXEC"]),
        Cmd::ReplyOff => cmd(&["CLIENT", "REPLY", "OFF"]),
        Cmd::ReplyOn => cmd(&["CLIENT", "REPLY", "ON"]),
    }
}

/// Encode a command as a RESP array of bulk strings.
pub fn cmd(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend_from_slice(format!("${}\r\n{}\r\n", w.len(), w).as_bytes());
    }
    out
}

/// Every command the model knows, for decoding what reached Redis.
pub const ALL: [Cmd; 12] = [
    Cmd::Get,
    Cmd::Incr,
    Cmd::Ping,
    Cmd::Blpop,
    Cmd::Subscribe(0),
    Cmd::Subscribe(1),
    Cmd::Unsubscribe(0),
    Cmd::Unsubscribe(1),
    Cmd::Multi,
    Cmd::Exec,
    Cmd::ReplyOff,
    Cmd::ReplyOn,
];

/// The command these bytes encode, if the model knows it.
pub fn decode(bytes: &[u8]) -> Option<Cmd> {
    ALL.into_iter().find(|c| encode(*c) == bytes)
}
