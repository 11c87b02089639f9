//! A fake world around one Session: Vec-backed host buffers and a fake clock.
#![allow(dead_code, clippy::unwrap_used, clippy::indexing_slicing)]

pub mod coverage;
pub mod harness;
pub mod redis_model;
pub mod vec_buffer;

use redis_idle_guard::config::Config;
use redis_idle_guard::session::{Session, TickAction, PING};

pub use redis_model::cmd;
pub use vec_buffer::VecBuffer;

pub struct World {
    pub session: Session,
    pub now: u64,
    /// Everything that reached Redis (client bytes and the filter's PINGs).
    pub to_redis: Vec<u8>,
    mark: usize,
    /// Everything that reached the client.
    pub to_client: Vec<u8>,
    pub bytes_read: usize,
}

impl World {
    pub fn new(config: Config) -> World {
        World {
            session: Session::new(&config, 0),
            now: 0,
            to_redis: Vec::new(),
            mark: 0,
            to_client: Vec::new(),
            bytes_read: 0,
        }
    }

    pub fn client(&mut self, bytes: &[u8]) {
        let mut b = VecBuffer {
            data: bytes.to_vec(),
            bytes_read: 0,
        };
        self.session.on_client_data(self.now, &mut b);
        self.bytes_read += b.bytes_read;
        self.to_redis.extend_from_slice(&b.data);
    }

    pub fn server(&mut self, bytes: &[u8]) {
        let mut b = VecBuffer {
            data: bytes.to_vec(),
            bytes_read: 0,
        };
        self.session.on_server_data(self.now, &mut b);
        self.bytes_read += b.bytes_read;
        self.to_client.extend_from_slice(&b.data);
        // Held client bytes released by this answer go to Redis, as an adapter sends them.
        if let Some(held) = self.session.take_release() {
            self.to_redis.extend_from_slice(&held);
        }
    }

    /// Advance the clock and run one tick; a SendPing is carried out (the PING reaches Redis).
    pub fn advance(&mut self, ms: u64) -> TickAction {
        self.now += ms;
        self.mark = self.to_redis.len();
        let action = self.session.on_tick(self.now);
        if action == TickAction::SendPing {
            self.to_redis.extend_from_slice(PING);
            self.session.ping_sent(self.now);
        }
        action
    }

    /// What reached Redis since the last `advance`.
    pub fn to_redis_since_mark(&self) -> &[u8] {
        &self.to_redis[self.mark..]
    }
}

/// The reply side of a scripted Redis: frames it owes, in wire order, each marked as the
/// filter's or the client's, and the bytes the client must end up with.
#[derive(Default)]
pub struct Wire {
    owed: std::collections::VecDeque<(Vec<u8>, bool)>,
    pub expected_client: Vec<u8>,
}

impl Wire {
    pub fn owe_client(&mut self, frame: Vec<u8>) {
        self.owed.push_back((frame, false));
    }

    pub fn owe_filter(&mut self, frame: Vec<u8>) {
        self.owed.push_back((frame, true));
    }

    /// What Redis puts on the wire next: an unsolicited frame (push, message) if any, then up
    /// to `n` owed frames. Everything but the filter's replies must reach the client.
    pub fn answer(&mut self, unsolicited: Option<&[u8]>, n: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        if let Some(f) = unsolicited {
            bytes.extend_from_slice(f);
            self.expected_client.extend_from_slice(f);
        }
        for _ in 0..n {
            let Some((f, ours)) = self.owed.pop_front() else {
                break;
            };
            bytes.extend_from_slice(&f);
            if !ours {
                self.expected_client.extend_from_slice(&f);
            }
        }
        bytes
    }

    /// Everything still owed.
    pub fn answer_all(&mut self) -> Vec<u8> {
        self.answer(None, usize::MAX)
    }
}

impl World {
    /// Deliver Redis's bytes cut after each of `splits` (relative sizes), then the rest.
    pub fn server_in_pieces(&mut self, bytes: &[u8], splits: &[usize]) {
        let mut cut = 0;
        for s in splits {
            let end = (cut + s).min(bytes.len());
            self.server(&bytes[cut..end]);
            cut = end;
        }
        self.server(&bytes[cut..]);
    }

    /// The client got exactly `expected`, and the filter followed the whole way.
    pub fn check_transparent(
        &mut self,
        expected: &[u8],
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        proptest::prop_assert_eq!(
            &self.to_client[..],
            expected,
            "the client got other bytes than its replies"
        );
        proptest::prop_assert!(
            !self.session.is_passthrough(),
            "passthrough on valid traffic: {:?}",
            self.session.take_events()
        );
        Ok(())
    }
}
