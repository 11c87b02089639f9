//! What the core asks of its host, besides the bytes of a callback: a timer per connection,
//! stats, and a store that every worker of the process sees. Each adapter implements [`Host`]
//! over its ABI; the tests implement it over plain memory.

use crate::duration::Millis;
use crate::metrics::{Metric, UpstreamMetric};
use crate::session::Buffer;
use crate::upstream::UpstreamId;

/// An upstream as a stat names it: its id and its cluster.
pub type Upstream<'a> = (UpstreamId, &'a str);

/// A connection, as its worker numbers it (unique among that worker's live connections).
pub type ConnectionId = u32;

/// Why a write to the shared store did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Another worker wrote the value since it was read.
    CasMismatch,
    /// The host refused, or has no store.
    Refused,
}

/// A value in the shared store and its CAS (a version the next write must quote).
pub type Stored = (Vec<u8>, u32);

pub trait Host {
    /// Call [`Worker::wake`](crate::worker::Worker::wake) for `id` at `at` or soon after. The
    /// worker calls this only when `at` is earlier than what it last armed for `id` since its
    /// last wake, so a host that keeps one deadline per connection keeps the earliest.
    fn arm(&mut self, id: ConnectionId, at: Millis);

    fn add(&mut self, metric: Metric, by: i64);
    fn record(&mut self, metric: Metric, value: u64);
    /// A newly seen upstream (ids are handed out in order, once each).
    fn define_upstream(&mut self, upstream: UpstreamId, cluster: &str);
    /// A stat of one upstream, named both ways: by the id it was defined with and by its
    /// cluster (a host with labelled stats needs no definition). Id 0 (unknown): no stat.
    fn upstream_add(&mut self, upstream: Upstream, metric: UpstreamMetric, by: i64);
    fn upstream_record(&mut self, upstream: Upstream, metric: UpstreamMetric, value: u64);

    /// The shared value under `key`; `Ok(None)` when it is not set.
    fn shared_get(&mut self, key: &str) -> Result<Option<Stored>, StoreError>;
    /// Set `key` if its CAS is still `cas` (0: whatever it is).
    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;

    /// Whether a PING can go out on a connection whose client has not sent a byte yet. The
    /// proxy-wasm host cannot (it sends through the client's paused read buffer, which exists
    /// only after a first read); the dynamic-module host can.
    fn sends_before_client_bytes(&self) -> bool {
        false
    }
}

/// What the host knows of a connection's upstream cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cluster {
    Known(String),
    /// Not yet: tcp_proxy has not picked the upstream.
    NotYet,
    /// The host cannot tell (stop asking).
    Unknowable,
}

/// What the core may ask of the host about one connection during one of its data callbacks.
/// Each is asked only when needed: a read that lies inside a skipped payload asks nothing.
pub trait DataCallback {
    type Buffer<'a>: Buffer
    where
        Self: 'a;
    /// The host clock; None when it cannot be read.
    fn now(&mut self) -> Option<Millis>;
    /// This callback's bytes (client bytes in a client callback, Redis bytes in a server one).
    fn buffer(&mut self) -> Self::Buffer<'_>;
    /// The Envoy cluster the connection goes to.
    fn cluster(&mut self) -> Cluster;
}
