//! Envoy stats: defined once per VM, recorded from session events.

use super::host::{self, Level};
use crate::metrics::{Kind, Metric};
use crate::session::{CloseReason, Event, StepAside};
use std::cell::Cell;

thread_local! {
    // One VM per worker thread: ids defined by the first root context serve them all.
    static IDS: Cell<Option<[u32; Metric::ALL.len()]>> = const { Cell::new(None) };
}

/// Define every metric once per VM. A refusal leaves the filter working without stats.
pub fn define_all() {
    if IDS.with(Cell::get).is_some() {
        return;
    }
    let mut ids = [0u32; Metric::ALL.len()];
    for (slot, metric) in ids.iter_mut().zip(Metric::ALL) {
        let kind = match metric.kind() {
            Kind::Counter => host::METRIC_COUNTER,
            Kind::Gauge => host::METRIC_GAUGE,
            Kind::Histogram => host::METRIC_HISTOGRAM,
        };
        match host::define_metric(kind, metric.name()) {
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

/// Turn one connection's events into stats and log lines.
pub fn record_events(connection: u32, events: Vec<Event>) {
    for event in events {
        match event {
            Event::KeepaliveSent { idle_ms } => {
                add(Metric::KeepaliveSent, 1);
                record(Metric::KeepaliveIdleMs, idle_ms);
            }
            Event::KeepaliveAnswered => add(Metric::KeepaliveAnswered, 1),
            Event::KeepaliveFailed => add(Metric::KeepaliveFailed, 1),
            Event::KeepaliveRefused => add(Metric::KeepaliveRefused, 1),
            Event::ReconnectSignal(r) => {
                add(Metric::ReconnectSignals, 1);
                host::log(Level::Info, &format!("redis-idle-guard: connection {connection}: closing the client connection while idle: {}", close_reason(r)));
            }
            Event::ProbeHeld => add(Metric::ProbeHeld, 1),
            Event::ProbePassed { waited_ms } => {
                add(Metric::ProbePassed, 1);
                record(Metric::ProbeWaitMs, waited_ms);
            }
            Event::ProbeFailed => {
                add(Metric::ProbeFailed, 1);
                host::log(Level::Info, &format!("redis-idle-guard: connection {connection}: closing: the link did not answer the probe within ping_timeout; the held command was never sent"));
            }
            Event::Passthrough(why) => {
                add(Metric::Passthrough, 1);
                host::log(Level::Info, &format!("redis-idle-guard: connection {connection}: passing through untouched from now on: {}", step_aside_reason(&why)));
            }
        }
    }
}
