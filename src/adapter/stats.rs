//! Envoy stats: defined once per VM, recorded from session events.

use super::host::{self, Level};
use crate::metrics::{Kind, Metric, UpstreamMetric};
use crate::session::{CloseReason, Event, StepAside};
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
                host::log(
                    Level::Warn,
                    &format!("redis-idle-guard: no stats for upstream {cluster}: defining {} refused ({e:?})", metric.suffix()),
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
                host::log(
                    Level::Warn,
                    &format!(
                        "redis-idle-guard: stats disabled: defining {} refused ({e:?})",
                        metric.name()
                    ),
                );
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

fn close_reason(r: CloseReason) -> &'static str {
    match r {
        CloseReason::PingTimeout => "keepalive PING unanswered within ping_timeout",
        CloseReason::InjectionRefused => {
            "host refused the keepalive PING; closing the idle connection before it goes stale"
        }
        CloseReason::UpstreamClosed => {
            "the Redis side closed (or Envoy closed the connection) while the client was idle"
        }
        CloseReason::ProbeFailed => {
            "the probe PING before a stale reuse went unanswered; the held command was never sent"
        }
    }
}

fn step_aside_reason(s: &StepAside) -> String {
    match s {
        StepAside::RequestParse(e) => format!("client sent bytes that are not RESP ({e})"),
        StepAside::ReplyParse(e) => format!("Redis sent bytes that are not RESP ({e})"),
        StepAside::LostTrack(why) => format!("lost track of replies: {why}"),
        StepAside::Monitor => "MONITOR".to_string(),
        StepAside::Replication => "replication stream".to_string(),
        StepAside::ModeChangeInMulti => "mode change queued inside MULTI".to_string(),
        StepAside::HostRefused => "a host call failed".to_string(),
    }
}

/// Turn one connection's events into stats and log lines. `cluster` names its upstream in
/// the log lines ("" when not known yet).
pub fn record_events(connection: u32, upstream: UpstreamId, cluster: &str, events: &[Event]) {
    use UpstreamMetric as U;
    for event in events {
        match *event {
            Event::KeepaliveSent { idle_ms } => {
                add(Metric::KeepaliveSent, 1);
                record(Metric::KeepaliveIdleMs, idle_ms);
                upstream_add(upstream, U::KeepaliveSent, 1);
            }
            Event::KeepaliveAnswered => add(Metric::KeepaliveAnswered, 1),
            Event::KeepaliveFailed => {
                add(Metric::KeepaliveFailed, 1);
                upstream_add(upstream, U::KeepaliveFailed, 1);
            }
            Event::KeepaliveRefused => add(Metric::KeepaliveRefused, 1),
            Event::IdleSurvived { idle_ms } => upstream_record(upstream, U::IdleSpellMs, idle_ms),
            Event::IdleDeath { idle_ms } => {
                upstream_add(upstream, U::IdleDeaths, 1);
                upstream_record(upstream, U::DeathIdleMs, idle_ms);
                host::log(Level::Info, &format!("redis-idle-guard: connection {connection} to upstream {cluster}: the link died after {} of silence", crate::duration::format_duration(idle_ms)));
            }
            Event::ReconnectSignal(r) => {
                add(Metric::ReconnectSignals, 1);
                upstream_add(upstream, U::ReconnectSignals, 1);
                host::log(Level::Info, &format!("redis-idle-guard: connection {connection}: closing the client connection while idle: {}", close_reason(r)));
            }
            Event::ProbeHeld => add(Metric::ProbeHeld, 1),
            Event::ProbePassed { waited_ms } => {
                add(Metric::ProbePassed, 1);
                record(Metric::ProbeWaitMs, waited_ms);
            }
            Event::ProbeFailed => {
                add(Metric::ProbeFailed, 1);
                upstream_add(upstream, U::ProbeFailed, 1);
                host::log(Level::Info, &format!("redis-idle-guard: connection {connection}: closing: the link did not answer the probe within ping_timeout; the held command was never sent"));
            }
            Event::Passthrough(ref why) => {
                add(Metric::Passthrough, 1);
                host::log(Level::Info, &format!("redis-idle-guard: connection {connection}: passing through untouched from now on: {}", step_aside_reason(why)));
            }
        }
    }
}
