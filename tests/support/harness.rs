//! A fake host around the core's [`Worker`]: a timer with one deadline per connection, stats in
//! maps, a shared store, and a simulated path with a fake clock (see [`Path`]).

use redis_idle_guard::config::Config;
use redis_idle_guard::host::{
    Cluster, ConnectionId, DataCallback, Host, StoreError, Stored, Upstream,
};
use redis_idle_guard::metrics::{Metric, UpstreamMetric};
use redis_idle_guard::session::{Buffer, CloseReason, PING};
use redis_idle_guard::upstream::UpstreamId;
use redis_idle_guard::worker::{Verdict, Wake, Worker};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

pub const PONG: &[u8] = b"$16\r\nredis-idle-guard\r\n";

/// The shared store of a process: every worker's host holds the same one.
pub type Store = Rc<RefCell<HashMap<String, Stored>>>;

#[derive(Default)]
pub struct FakeHost {
    /// The timer: one deadline per connection, the earliest asked for.
    pub armed: BTreeMap<ConnectionId, u64>,
    pub arms: usize,
    pub stats: BTreeMap<&'static str, i64>,
    pub upstream: BTreeMap<(String, &'static str), i64>,
    pub store: Store,
}

impl Host for FakeHost {
    fn arm(&mut self, id: ConnectionId, at: u64) {
        self.arms += 1;
        let slot = self.armed.entry(id).or_insert(at);
        *slot = (*slot).min(at);
    }
    fn add(&mut self, metric: Metric, by: i64) {
        *self.stats.entry(metric.name()).or_default() += by;
    }
    fn record(&mut self, metric: Metric, value: u64) {
        self.stats.insert(metric.name(), value as i64);
    }
    fn define_upstream(&mut self, _upstream: UpstreamId, _cluster: &str) {}
    fn upstream_add(&mut self, (_, cluster): Upstream, metric: UpstreamMetric, by: i64) {
        *self
            .upstream
            .entry((cluster.to_string(), metric.suffix()))
            .or_default() += by;
    }
    fn upstream_record(&mut self, (_, cluster): Upstream, metric: UpstreamMetric, value: u64) {
        self.upstream
            .insert((cluster.to_string(), metric.suffix()), value as i64);
    }
    fn shared_get(&mut self, key: &str) -> Result<Option<Stored>, StoreError> {
        Ok(self.store.borrow().get(key).cloned())
    }
    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut store = self.store.borrow_mut();
        let current = store.get(key).map_or(0, |(_, c)| *c);
        if cas != 0 && cas != current {
            return Err(StoreError::CasMismatch);
        }
        store.insert(key.to_string(), (value.to_vec(), current + 1));
        Ok(())
    }
}

/// A callback's bytes, edited in place.
pub struct Bytes<'a>(&'a mut Vec<u8>);

impl Buffer for Bytes<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn read(&mut self, start: usize, len: usize) -> Option<&[u8]> {
        let end = start.checked_add(len)?.min(self.0.len());
        self.0.get(start..end)
    }
    fn replace_prefix(&mut self, upto: usize, with: &[u8]) -> bool {
        if upto > self.0.len() {
            return false;
        }
        self.0.splice(0..upto, with.iter().copied());
        true
    }
}

pub struct Callback<'a> {
    now: u64,
    bytes: &'a mut Vec<u8>,
    cluster: &'a Cluster,
    asked: &'a mut usize,
}

impl DataCallback for Callback<'_> {
    type Buffer<'b>
        = Bytes<'b>
    where
        Self: 'b;
    fn now(&mut self) -> Option<u64> {
        Some(self.now)
    }
    fn buffer(&mut self) -> Bytes<'_> {
        Bytes(self.bytes)
    }
    fn cluster(&mut self) -> Cluster {
        *self.asked += 1;
        self.cluster.clone()
    }
}

/// One worker, its host, its connections' wires and a clock.
pub struct Harness {
    pub worker: Worker,
    pub host: FakeHost,
    pub now: u64,
    pub cluster: Cluster,
    pub asked: usize,
    pub to_redis: BTreeMap<ConnectionId, Vec<u8>>,
    pub to_client: BTreeMap<ConnectionId, Vec<u8>>,
    pub closed: Vec<(ConnectionId, CloseReason)>,
    /// The path (see [`Path`]): how Redis and the network answer.
    pub path: Path,
    /// Last byte either way on each connection (for the simulated cutoffs).
    pub last_io: BTreeMap<ConnectionId, u64>,
    /// Connections whose link is gone (their bytes reach nobody).
    pub dead: std::collections::BTreeSet<ConnectionId>,
    /// A pool: a connection that closes is replaced at once by a new one, used once.
    pub pool: bool,
    next_id: ConnectionId,
    /// Every connection that died or was closed, with when.
    pub deaths: Vec<(u64, ConnectionId)>,
}

/// How the simulated path treats idle connections and the filter's PINGs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// PINGs are not answered unless the test does it.
    Manual,
    /// Every PING is answered at once.
    Answering,
    /// Nothing is answered, and a link that gets no answer is dead (a black hole).
    BlackHole,
    /// A NAT forgets a flow idle this long: a PING after that is never answered.
    Nat(u64),
    /// Redis (`timeout`) closes a connection idle this long (its FIN reaches the filter).
    Closes(u64),
    /// Envoy's tcp_proxy `idle_timeout`: Envoy closes the connection idle this long.
    EnvoyCloses(u64),
}

impl Harness {
    pub fn new(config: &str, store: &Store) -> Harness {
        Harness {
            worker: Worker::new(Config::parse(config.as_bytes()).unwrap()),
            host: FakeHost {
                store: Rc::clone(store),
                ..FakeHost::default()
            },
            now: 0,
            cluster: Cluster::Known("redis".into()),
            asked: 0,
            to_redis: BTreeMap::new(),
            to_client: BTreeMap::new(),
            closed: Vec::new(),
            path: Path::Manual,
            last_io: BTreeMap::new(),
            dead: Default::default(),
            pool: false,
            next_id: 1_000,
            deaths: Vec::new(),
        }
    }

    /// Replace a closed connection, as a pool does.
    fn replace(&mut self, id: ConnectionId) {
        self.deaths.push((self.now, id));
        if self.pool {
            self.next_id += 1;
            let next = self.next_id;
            self.open_used(next);
        }
    }

    pub fn open(&mut self, id: ConnectionId) {
        self.worker.open(&mut self.host, id, Some(self.now));
        self.last_io.insert(id, self.now);
    }

    /// Open a connection and do one GET on it.
    pub fn open_used(&mut self, id: ConnectionId) {
        self.open(id);
        self.client(id, &crate::support::cmd(&["GET", "k"]));
        self.server(id, b"$1\r\nv\r\n");
    }

    pub fn client(&mut self, id: ConnectionId, bytes: &[u8]) -> Verdict {
        self.last_io.insert(id, self.now);
        let mut data = bytes.to_vec();
        let mut cb = Callback {
            now: self.now,
            bytes: &mut data,
            cluster: &self.cluster,
            asked: &mut self.asked,
        };
        let verdict = self
            .worker
            .on_client_data(&mut self.host, id, bytes.len(), false, &mut cb);
        self.to_redis.entry(id).or_default().extend(data);
        verdict
    }

    pub fn server(
        &mut self,
        id: ConnectionId,
        bytes: &[u8],
    ) -> (Option<Vec<u8>>, Option<CloseReason>) {
        self.last_io.insert(id, self.now);
        let mut data = bytes.to_vec();
        let mut cb = Callback {
            now: self.now,
            bytes: &mut data,
            cluster: &self.cluster,
            asked: &mut self.asked,
        };
        let out = self
            .worker
            .on_server_data(&mut self.host, id, bytes.len(), false, &mut cb);
        self.to_client.entry(id).or_default().extend(data);
        out
    }

    /// Let time pass to `t`, waking each connection at its armed deadline, in order; a PING
    /// asked for goes to Redis.
    pub fn run_until(&mut self, t: u64) {
        loop {
            let due = self
                .host
                .armed
                .iter()
                .filter(|(_, &at)| at <= t)
                .min_by_key(|(_, &at)| at)
                .map(|(&id, &at)| (id, at));
            // A path that closes idle connections closes them at their cutoff.
            let closing = match self.path {
                Path::Closes(cutoff) | Path::EnvoyCloses(cutoff) => self
                    .last_io
                    .iter()
                    .filter(|(id, _)| !self.dead.contains(id) && self.worker.is_tracked(**id))
                    .map(|(&id, &at)| (id, at + cutoff))
                    .filter(|&(_, at)| at <= t)
                    .min_by_key(|&(_, at)| at),
                _ => None,
            };
            match (due, closing) {
                (Some(w), Some(c)) if c.1 < w.1 => self.path_closes(c.0, c.1),
                (None, Some(c)) => self.path_closes(c.0, c.1),
                (Some((id, at)), _) => self.wake(id, at),
                (None, None) => break,
            }
        }
        self.now = t;
    }

    fn wake(&mut self, id: ConnectionId, at: u64) {
        self.host.armed.remove(&id);
        self.now = self.now.max(at);
        match self.worker.wake(&mut self.host, id, self.now) {
            Wake::Nothing => {}
            Wake::SendPing => {
                self.to_redis.entry(id).or_default().extend_from_slice(PING);
                self.worker.ping_sent(&mut self.host, id, self.now);
                let idle = self.now - self.last_io.get(&id).copied().unwrap_or(0);
                let answered = match self.path {
                    Path::Manual => false,
                    Path::BlackHole => false,
                    Path::Answering | Path::Closes(_) | Path::EnvoyCloses(_) => true,
                    Path::Nat(cutoff) => idle < cutoff,
                } && !self.dead.contains(&id);
                if answered {
                    self.server(id, PONG);
                } else if self.path != Path::Manual {
                    self.dead.insert(id);
                }
            }
            Wake::Close(reason) => {
                self.closed.push((id, reason));
                self.dead.insert(id);
                self.worker.remove(&mut self.host, id);
                self.replace(id);
            }
        }
    }

    /// The path closes connection `id` at `at` (Redis's FIN reaches the filter).
    fn path_closes(&mut self, id: ConnectionId, at: u64) {
        self.now = self.now.max(at);
        if matches!(self.path, Path::EnvoyCloses(_)) {
            self.dead.insert(id);
            self.worker.closed(&mut self.host, id, true, self.now);
            self.worker.remove(&mut self.host, id);
        } else {
            self.redis_fin(id);
        }
        self.replace(id);
    }

    /// Redis's FIN on connection `id`, now.
    pub fn redis_fin(&mut self, id: ConnectionId) {
        self.dead.insert(id);
        let mut data = Vec::new();
        let mut cb = Callback {
            now: self.now,
            bytes: &mut data,
            cluster: &self.cluster,
            asked: &mut self.asked,
        };
        self.worker
            .on_server_data(&mut self.host, id, 0, true, &mut cb);
        self.worker.remove(&mut self.host, id);
    }

    /// Redis restarts: every live connection gets its FIN at once.
    pub fn restart(&mut self) {
        let live: Vec<ConnectionId> = self
            .last_io
            .keys()
            .copied()
            .filter(|id| !self.dead.contains(id) && self.worker.is_tracked(*id))
            .collect();
        for id in &live {
            self.redis_fin(*id);
        }
        for id in live {
            self.replace(id);
        }
    }

    /// The keepalive interval the upstream's connections use now.
    pub fn interval(&self) -> i64 {
        self.upstream("keepalive_interval_ms")
    }

    pub fn pings_to(&self, id: ConnectionId) -> usize {
        let wire = self.to_redis.get(&id).map_or(&[][..], |w| &w[..]);
        wire.windows(PING.len()).filter(|w| *w == PING).count()
    }

    pub fn upstream(&self, suffix: &str) -> i64 {
        self.host
            .upstream
            .get(&("redis".to_string(), suffix))
            .copied()
            .unwrap_or(0)
    }
}
