//! A fake world around one Session: Vec-backed host buffers and a fake clock.
#![allow(dead_code, clippy::unwrap_used, clippy::indexing_slicing)]

use redis_idle_guard::config::Config;
use redis_idle_guard::session::{Buffer, Session, TickAction, PING};

/// Encode a command as a RESP array of bulk strings.
pub fn cmd(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend_from_slice(format!("${}\r\n{}\r\n", w.len(), w).as_bytes());
    }
    out
}

/// One callback's buffer, as the host holds it.
pub struct VecBuffer {
    pub data: Vec<u8>,
    pub bytes_read: usize,
}

impl Buffer for VecBuffer {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn read(&mut self, start: usize, len: usize) -> Option<Vec<u8>> {
        let end = start.checked_add(len)?;
        let bytes = self.data.get(start..end.min(self.data.len()))?.to_vec();
        self.bytes_read += bytes.len();
        Some(bytes)
    }
    fn replace_prefix(&mut self, upto: usize, with: &[u8]) -> bool {
        if upto > self.data.len() {
            return false;
        }
        self.data.splice(0..upto, with.iter().copied());
        true
    }
}

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
