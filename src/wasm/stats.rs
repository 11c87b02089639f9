//! Envoy stats through proxy-wasm metrics: defined once per VM (per upstream, when it is first
//! seen), with ids kept per VM.

use super::abi as host;
use crate::metrics::{Kind, Metric, UpstreamMetric};
use crate::upstream::UpstreamId;
use std::cell::{Cell, RefCell};

type UpstreamIds = [u32; UpstreamMetric::ALL.len()];

thread_local! {
    // One VM per worker thread: ids defined by the first root context serve them all.
    static IDS: Cell<Option<[u32; Metric::ALL.len()]>> = const { Cell::new(None) };
    // Per upstream, indexed by UpstreamId - 1; None where defining was refused.
    static UPSTREAM_IDS: RefCell<Vec<Option<UpstreamIds>>> = const { RefCell::new(Vec::new()) };
}

fn host_kind(kind: Kind) -> u32 {
    match kind {
        Kind::Counter => host::METRIC_COUNTER,
        Kind::Gauge => host::METRIC_GAUGE,
        Kind::Histogram => host::METRIC_HISTOGRAM,
    }
}

/// Define the stats of a newly seen upstream (ids are handed out in order, once each).
pub fn define_upstream(upstream: UpstreamId, cluster: &str) {
    let mut ids = [0u32; UpstreamMetric::ALL.len()];
    let mut ok = true;
    for (slot, metric) in ids.iter_mut().zip(UpstreamMetric::ALL) {
        match host::define_metric(host_kind(metric.kind()), &metric.name(cluster)) {
            Ok(id) => *slot = id,
            Err(e) => {
                log::warn!(
                    "no stats for upstream {cluster}: defining {} refused ({e:?})",
                    metric.suffix()
                );
                ok = false;
                break;
            }
        }
    }
    UPSTREAM_IDS.with(|table| {
        if let Ok(mut table) = table.try_borrow_mut() {
            let index = usize::from(upstream).saturating_sub(1);
            if table.len() <= index {
                table.resize(index + 1, None);
            }
            if let Some(slot) = table.get_mut(index) {
                *slot = ok.then_some(ids);
            }
        }
    });
}

fn upstream_id(upstream: UpstreamId, metric: UpstreamMetric) -> Option<u32> {
    let index = usize::from(upstream).checked_sub(1)?;
    UPSTREAM_IDS.with(|table| {
        let table = table.try_borrow().ok()?;
        table.get(index)?.as_ref()?.get(metric.index()).copied()
    })
}

pub fn upstream_add(upstream: UpstreamId, metric: UpstreamMetric, by: i64) {
    if let Some(id) = upstream_id(upstream, metric) {
        let _ = host::increment_metric(id, by);
    }
}

pub fn upstream_record(upstream: UpstreamId, metric: UpstreamMetric, value: u64) {
    if let Some(id) = upstream_id(upstream, metric) {
        let _ = host::record_metric(id, value);
    }
}

/// Define every metric once per VM. A refusal leaves the filter working without stats.
pub fn define_all() {
    if IDS.with(Cell::get).is_some() {
        return;
    }
    let mut ids = [0u32; Metric::ALL.len()];
    for (slot, metric) in ids.iter_mut().zip(Metric::ALL) {
        match host::define_metric(host_kind(metric.kind()), metric.name()) {
            Ok(id) => *slot = id,
            Err(e) => {
                log::warn!("stats disabled: defining {} refused ({e:?})", metric.name());
                return;
            }
        }
    }
    IDS.with(|c| c.set(Some(ids)));
}

fn id(metric: Metric) -> Option<u32> {
    IDS.with(Cell::get)
        .and_then(|ids| ids.get(metric.index()).copied())
}

pub fn add(metric: Metric, by: i64) {
    if let Some(id) = id(metric) {
        let _ = host::increment_metric(id, by);
    }
}

pub fn record(metric: Metric, value: u64) {
    if let Some(id) = id(metric) {
        let _ = host::record_metric(id, value);
    }
}
