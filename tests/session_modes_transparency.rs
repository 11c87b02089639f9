//! Transparency across modes: a small model of Redis 7 (subscribed RESP2/RESP3, MULTI/EXEC,
//! CLIENT REPLY OFF/ON, blocked commands) answers random pipelines while the filter sends its
//! keepalives whenever it judges it may. The client must receive exactly Redis's frames minus
//! the filter's replies, and the filter must never lose track on valid traffic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

mod support;

use proptest::prelude::*;
use redis_idle_guard::config::Config;
use redis_idle_guard::session::{TickAction, PING};
use std::collections::BTreeSet;
use support::{cmd, Wire, World};

const PONG: &[u8] = b"$16\r\nredis-idle-guard\r\n";
const PONG_RESP2_SUB: &[u8] = b"*2\r\n$4\r\npong\r\n$16\r\nredis-idle-guard\r\n";

#[derive(Debug, Clone, Copy)]
enum Cmd {
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

#[derive(Debug, Clone)]
enum Op {
    Send(Cmd),
    /// Redis puts out up to `n` owed frames in `splits` segments, maybe a message first.
    Answer {
        n: usize,
        splits: Vec<usize>,
        message: bool,
    },
    Wait(u64),
}

fn bulk(s: &str) -> Vec<u8> {
    format!("${}\r\n{s}\r\n", s.len()).into_bytes()
}

/// The subset of Redis 7 the filter must model, replying frame by frame in wire order.
#[derive(Default)]
struct Redis {
    resp3: bool,
    channels: BTreeSet<u8>,
    multi: Option<Vec<Vec<u8>>>,
    reply_off: bool,
    counter: i64,
}

impl Redis {
    fn subscribed(&self) -> bool {
        !self.channels.is_empty()
    }

    fn pubsub(&self, kind: &str, ch: u8) -> Vec<u8> {
        let head = if self.resp3 { ">3\r\n" } else { "*3\r\n" };
        let mut f = head.as_bytes().to_vec();
        f.extend(bulk(kind));
        f.extend(bulk(&format!("ch{ch}")));
        f.extend(format!(":{}\r\n", self.channels.len()).into_bytes());
        f
    }

    fn message(&self) -> Option<Vec<u8>> {
        let ch = *self.channels.iter().next()?;
        let head = if self.resp3 { ">3\r\n" } else { "*3\r\n" };
        let mut f = head.as_bytes().to_vec();
        f.extend(bulk("message"));
        f.extend(bulk(&format!("ch{ch}")));
        f.extend(bulk("hello"));
        Some(f)
    }

    /// The filter's PING.
    fn filter_ping(&self) -> Vec<u8> {
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
    fn client(&mut self, c: Cmd) -> Vec<Vec<u8>> {
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

fn encode(c: Cmd) -> Vec<u8> {
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

fn any_cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        3 => Just(Cmd::Get),
        3 => Just(Cmd::Incr),
        2 => Just(Cmd::Ping),
        1 => Just(Cmd::Blpop),
        2 => (0..2u8).prop_map(Cmd::Subscribe),
        2 => (0..2u8).prop_map(Cmd::Unsubscribe),
        1 => Just(Cmd::Multi),
        1 => Just(Cmd::Exec),
        1 => Just(Cmd::ReplyOff),
        1 => Just(Cmd::ReplyOn),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any_cmd().prop_map(Op::Send),
        3 => (1..4usize, proptest::collection::vec(1..30usize, 0..3), any::<bool>())
            .prop_map(|(n, splits, message)| Op::Answer { n, splits, message }),
        3 => prop_oneof![Just(300u64), Just(1_000), Just(2_500)].prop_map(Op::Wait),
    ]
}

fn run(ops: &[Op], resp3: bool) -> Result<(), TestCaseError> {
    let mut w = World::new(Config {
        keepalive_interval: Some(1_000),
        ping_timeout: 1_000_000,
        probe_after: None,
        learn: None,
    });
    let mut redis = Redis {
        resp3,
        ..Redis::default()
    };
    let mut wire = Wire::default();
    if resp3 {
        w.client(&cmd(&["HELLO", "3"]));
        let hello = b"%1\r\n$5\r\nproto\r\n:3\r\n".to_vec();
        w.server(&hello);
        wire.expected_client.extend(hello);
    }
    for op in ops {
        match op {
            Op::Send(c) => {
                let c = *c;
                // Keep what the filter deliberately does not model out of the scenario: mode
                // changes queued in MULTI, and CLIENT REPLY where Redis would refuse it.
                let restricted = redis.subscribed() && !redis.resp3;
                let c = match c {
                    Cmd::Subscribe(_) | Cmd::Unsubscribe(_) | Cmd::ReplyOff | Cmd::ReplyOn
                        if redis.multi.is_some() =>
                    {
                        Cmd::Get
                    }
                    // Redis refuses these while RESP2-subscribed; the filter cannot tell a refused
                    // MULTI from an open one until its reply, and steps aside if a mode change
                    // follows. Real pubsub clients send neither.
                    Cmd::ReplyOff | Cmd::ReplyOn | Cmd::Multi if restricted => Cmd::Ping,
                    Cmd::Subscribe(_) | Cmd::Unsubscribe(_) | Cmd::Multi if redis.reply_off => {
                        Cmd::Incr
                    }
                    c => c,
                };
                w.client(&encode(c));
                for f in redis.client(c) {
                    wire.owe_client(f);
                }
            }
            Op::Wait(ms) => {
                if w.advance(*ms) == TickAction::SendPing {
                    prop_assert_eq!(w.to_redis_since_mark(), PING);
                    wire.owe_filter(redis.filter_ping());
                }
            }
            Op::Answer { n, splits, message } => {
                let unsolicited = if *message { redis.message() } else { None };
                let bytes = wire.answer(unsolicited.as_deref(), *n);
                w.server_in_pieces(&bytes, splits);
            }
        }
    }
    let rest = wire.answer_all();
    w.server(&rest);
    w.check_transparent(&wire.expected_client)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn resp2_modes_are_transparent(ops in proptest::collection::vec(op(), 1..50)) {
        run(&ops, false)?;
    }

    #[test]
    fn resp3_modes_are_transparent(ops in proptest::collection::vec(op(), 1..50)) {
        run(&ops, true)?;
    }
}
