//! The core's [`Host`] over proxy-wasm: stats by metric id, shared data, and the plugin's tick
//! schedule as the connections' timer.

use super::{abi, stats};
use crate::duration::Millis;
use crate::host::{ConnectionId, Host, StoreError, Stored, Upstream};
use crate::metrics::{Metric, UpstreamMetric};
use crate::schedule::Schedule;
use crate::upstream::UpstreamId;

/// Borrowed for one call into the worker.
pub struct WasmHost<'a> {
    pub schedule: &'a mut Schedule,
}

impl Host for WasmHost<'_> {
    fn arm(&mut self, id: ConnectionId, at: Millis) {
        self.schedule.arm(id, Some(at));
    }

    fn add(&mut self, metric: Metric, by: i64) {
        stats::add(metric, by);
    }

    fn record(&mut self, metric: Metric, value: u64) {
        stats::record(metric, value);
    }

    fn define_upstream(&mut self, upstream: UpstreamId, cluster: &str) {
        stats::define_upstream(upstream, cluster);
    }

    fn upstream_add(&mut self, (id, _): Upstream, metric: UpstreamMetric, by: i64) {
        stats::upstream_add(id, metric, by);
    }

    fn upstream_record(&mut self, (id, _): Upstream, metric: UpstreamMetric, value: u64) {
        stats::upstream_record(id, metric, value);
    }

    fn shared_get(&mut self, key: &str) -> Result<Option<Stored>, StoreError> {
        abi::shared_data(key)
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        abi::set_shared_data(key, value, cas)
    }
}
