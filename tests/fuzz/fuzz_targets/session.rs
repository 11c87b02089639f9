//! Fuzz one session, not only the framer: arbitrary client commands cut at any byte, Redis
//! answers in any pieces, junk from either side, ticks at any time, probes and ping timeouts.
//! A model of Redis (tests/support/redis_model.rs) answers exactly the frames that reached it.
//! Invariants, checked after every step:
//! - no panic;
//! - Redis received exactly the client's bytes plus the filter's PINGs, each PING between two
//!   whole commands (a prefix of them while a command is held or after a close);
//! - the client received exactly Redis's bytes minus the replies to the filter's PINGs (after
//!   junk from Redis, every byte: the connection is in passthrough).
//!
//! The first input byte picks the configuration; then each op is one byte and its arguments.
//! Run: `make fuzz FUZZ_TARGET=session` (30 s of it in every `make test`).
#![no_main]

#[path = "../../support/redis_model.rs"]
mod redis_model;
#[path = "../../support/vec_buffer.rs"]
mod vec_buffer;

use libfuzzer_sys::fuzz_target;
use redis_idle_guard::config::Config;
use redis_idle_guard::resp::{Framer, Limits, Side};
use redis_idle_guard::session::{Session, TickAction, PING};
use redis_model::{decode, encode, Cmd, Redis, ALL};
use vec_buffer::VecBuffer;
use std::collections::VecDeque;

/// Input bytes, read from the front; zeros when they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.byte() as usize % (max + 1)).min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken.to_vec()
    }
}

struct World {
    session: Session,
    now: u64,
    closed: bool,
    /// What the client sent, and what reached Redis (client bytes, held ones once released,
    /// and the filter's PINGs).
    client_sent: Vec<u8>,
    to_redis: Vec<u8>,
    /// Redis's side: frames what reached it, answers through the model.
    redis: Redis,
    framer: Framer,
    framed: usize,
    /// After a protocol error Redis answers it and reads nothing more.
    redis_dead: bool,
    /// To the client: owed frames (bytes, is the filter's), what Redis sent, what arrived.
    owed: VecDeque<(Vec<u8>, bool)>,
    expected_client: Vec<u8>,
    to_client: Vec<u8>,
    /// Redis sent junk: the connection goes to passthrough and every later byte reaches the client.
    all_pass: bool,
    /// Client bytes, minus the filter's PINGs, as Redis framed them.
    seen_from_client: Vec<u8>,
}

impl World {
    fn close(&mut self) {
        self.closed = true;
    }

    fn after_callback(&mut self) {
        if let Some(held) = self.session.take_release() {
            self.to_redis.extend_from_slice(&held);
        }
        if self.session.take_close().is_some() {
            self.close();
        }
        self.redis_reads();
    }

    fn client(&mut self, bytes: &[u8]) {
        if self.closed || bytes.is_empty() {
            return;
        }
        self.client_sent.extend_from_slice(bytes);
        let mut b = VecBuffer::new(bytes.to_vec());
        self.session.on_client_data(self.now, &mut b);
        self.to_redis.extend_from_slice(&b.data);
        self.after_callback();
    }

    fn server(&mut self, bytes: &[u8]) {
        if self.closed || bytes.is_empty() {
            return;
        }
        let mut b = VecBuffer::new(bytes.to_vec());
        self.session.on_server_data(self.now, &mut b);
        self.to_client.extend_from_slice(&b.data);
        self.after_callback();
    }

    fn tick(&mut self, ms: u64) {
        if self.closed {
            return;
        }
        self.now += ms;
        match self.session.on_tick(self.now) {
            TickAction::None => {}
            TickAction::SendPing => {
                self.to_redis.extend_from_slice(PING);
                self.session.ping_sent(self.now);
            }
            TickAction::Close(_) => self.close(),
        }
        self.after_callback();
    }

    /// Redis reads what reached it, frame by frame, and owes the model's replies.
    fn redis_reads(&mut self) {
        if self.redis_dead {
            return;
        }
        let new = self.to_redis.get(self.framed..).unwrap_or_default().to_vec();
        self.framed = self.to_redis.len();
        let mut frames = Vec::new();
        let result = self
            .framer
            .feed(&new, &mut |f| frames.push((f.start as usize, f.end as usize)));
        for (start, end) in frames {
            let bytes = self.to_redis.get(start..end).unwrap_or_default().to_vec();
            if bytes == PING {
                let pong = self.redis.filter_ping();
                self.owed.push_back((pong, true));
                continue;
            }
            self.seen_from_client.extend_from_slice(&bytes);
            let cmd = decode(&bytes)
                .unwrap_or_else(|| panic!("Redis got a frame no client sent: {bytes:?}"));
            for reply in self.redis.client(cmd) {
                self.owed.push_back((reply, false));
            }
        }
        if result.is_err() {
            self.owed
                .push_back((b"-ERR Protocol error: invalid multibulk length\r\n".to_vec(), false));
            self.redis_dead = true;
        }
    }

    /// Redis puts up to `n` owed frames on the wire, in pieces.
    fn answer(&mut self, n: usize, cuts: &[u8], message: bool) {
        if self.closed {
            return;
        }
        let mut bytes = Vec::new();
        if message && !self.redis_dead {
            if let Some(m) = self.redis.message() {
                self.expected_client.extend_from_slice(&m);
                bytes.extend(m);
            }
        }
        for _ in 0..n {
            let Some((f, ours)) = self.owed.pop_front() else {
                break;
            };
            if !ours || self.all_pass {
                self.expected_client.extend_from_slice(&f);
            }
            bytes.extend(f);
        }
        let mut at = 0;
        for c in cuts {
            let end = (at + *c as usize % 40 + 1).min(bytes.len());
            let piece = bytes.get(at..end).unwrap_or_default().to_vec();
            self.server(&piece);
            at = end;
        }
        let rest = bytes.get(at..).unwrap_or_default().to_vec();
        self.server(&rest);
    }

    fn check(&self) {
        // Redis got the client's bytes, PINGs only between whole commands: what it framed as
        // client frames is a prefix of what the client sent (all of it unless held or closed).
        assert!(
            self.client_sent.starts_with(&self.seen_from_client) || self.redis_dead,
            "Redis got other bytes than the client's plus PINGs"
        );
        assert_eq!(
            self.to_client, self.expected_client,
            "the client got other bytes than Redis's minus the filter's replies"
        );
    }
}

fn config(b: u8) -> Config {
    Config {
        keepalive_interval: [None, Some(1_000), Some(300)][b as usize % 3],
        ping_timeout: [400, 2_000, 1_000_000][(b / 3) as usize % 3],
        probe_after: [None, Some(500), Some(2_000)][(b / 9) as usize % 3],
        learn: None,
    }
}

/// Keep out of the scenario what the filter deliberately does not model (see
/// tests/core/session_is_byte_exact_across_modes.rs): mode changes queued in MULTI, refused
/// mode commands.
fn allowed(shadow: &Redis, c: Cmd) -> Cmd {
    let restricted = shadow.subscribed() && !shadow.resp3;
    match c {
        Cmd::Subscribe(_) | Cmd::Unsubscribe(_) | Cmd::ReplyOff | Cmd::ReplyOn
            if shadow.multi.is_some() =>
        {
            Cmd::Get
        }
        Cmd::ReplyOff | Cmd::ReplyOn | Cmd::Multi if restricted => Cmd::Ping,
        Cmd::Subscribe(_) | Cmd::Unsubscribe(_) | Cmd::Multi if shadow.reply_off => Cmd::Incr,
        c => c,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let setup = input.byte();
    let resp3 = setup & 0x80 != 0;
    let mut w = World {
        session: Session::new(&config(setup & 0x7f), 0),
        now: 0,
        closed: false,
        client_sent: Vec::new(),
        to_redis: Vec::new(),
        redis: Redis {
            resp3,
            ..Redis::default()
        },
        framer: Framer::new(Side::Request, Limits::default()),
        framed: 0,
        redis_dead: false,
        owed: VecDeque::new(),
        expected_client: Vec::new(),
        to_client: Vec::new(),
        all_pass: false,
        seen_from_client: Vec::new(),
    };
    // The client's view of the modes, to keep commands within what the filter models.
    let mut shadow = Redis {
        resp3,
        ..Redis::default()
    };
    let mut client_junked = false;
    for _ in 0..200 {
        if input.0.is_empty() || w.closed {
            break;
        }
        match input.byte() % 8 {
            // A whole command, or one cut into pieces with time passing between them.
            op @ (0..=2) => {
                let c = ALL[input.byte() as usize % ALL.len()];
                if client_junked {
                    continue;
                }
                let c = allowed(&shadow, c);
                shadow.client(c);
                let bytes = encode(c);
                if op == 2 {
                    let mut at = 0;
                    while at < bytes.len() {
                        let end = (at + input.byte() as usize % 8 + 1).min(bytes.len());
                        let piece = bytes.get(at..end).unwrap_or_default().to_vec();
                        w.client(&piece);
                        w.tick([0, 100, 400, 1_000][input.byte() as usize % 4]);
                        at = end;
                    }
                } else {
                    w.client(&bytes);
                }
            }
            3 | 4 => {
                let n = input.byte() as usize % 4 + 1;
                let cuts = input.bytes(3);
                let message = input.byte() & 1 == 1;
                w.answer(n, &cuts, message);
            }
            5 | 6 => {
                let ms = [50, 299, 300, 301, 999, 1_000, 1_001, 2_500, 30_000];
                w.tick(ms[input.byte() as usize % ms.len()]);
            }
            _ => {
                // Junk: from the client, a multibulk length that is not a number (a protocol
                // error wherever it starts); from Redis, a type byte RESP does not have.
                let tail = input.bytes(8);
                if input.byte() & 1 == 0 {
                    if !client_junked {
                        client_junked = true;
                        w.client(&[b"*x".as_slice(), &tail].concat());
                    }
                } else if w.owed.is_empty() {
                    w.all_pass = true;
                    let junk = [b"?".as_slice(), &tail].concat();
                    w.expected_client.extend_from_slice(&junk);
                    w.server(&junk);
                }
            }
        }
        w.check();
    }
    // Redis answers everything still owed.
    w.answer(usize::MAX, &[], false);
    w.check();
    if !w.closed && !client_junked && !w.redis_dead {
        assert_eq!(
            w.seen_from_client, w.client_sent,
            "a client command never reached Redis on an open connection"
        );
    }
});
