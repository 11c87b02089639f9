//! What a connection's events change in the stats, and the log lines they make. The same in
//! every build: stats through [`Host`], log lines through the `log` facade.

use crate::duration::format_duration;
use crate::host::{ConnectionId, Host};
use crate::metrics::{Metric, UpstreamMetric as U};
use crate::session::{CloseReason, Event, PassthroughReason};
use crate::upstream::UpstreamId;

fn close_reason(r: CloseReason) -> &'static str {
    match r {
        CloseReason::PingTimeout => "keepalive PING unanswered within ping_timeout",
        CloseReason::InjectionRefused => {
            "host refused the keepalive PING; closing the idle connection before it goes stale"
        }
        CloseReason::ServerClosed => {
            "the Redis side closed (or Envoy closed the connection) while the client was idle"
        }
        CloseReason::ProbeFailed => {
            "the probe PING before a stale reuse went unanswered; the held command was never sent"
        }
    }
}

fn passthrough_reason(s: &PassthroughReason) -> String {
    match s {
        PassthroughReason::RequestParse(e) => format!("client sent bytes that are not RESP ({e})"),
        PassthroughReason::ReplyParse(e) => format!("Redis sent bytes that are not RESP ({e})"),
        PassthroughReason::LostTrack(why) => format!("lost track of replies: {why}"),
        PassthroughReason::Monitor => "MONITOR".to_string(),
        PassthroughReason::Replication => "replication stream".to_string(),
        PassthroughReason::ModeChangeInMulti => "mode change queued inside MULTI".to_string(),
        PassthroughReason::HostRefused => "a host call failed".to_string(),
        PassthroughReason::Tls => {
            "the client speaks TLS to Redis (encrypted end to end: originate TLS in Envoy instead)"
                .to_string()
        }
    }
}

/// Turn one connection's events into stats and log lines. `cluster` names its upstream in the
/// log lines ("" when not known yet).
pub fn events(
    host: &mut impl Host,
    id: ConnectionId,
    upstream: UpstreamId,
    cluster: &str,
    events: &[Event],
) {
    let up = (upstream, cluster);
    for event in events {
        match *event {
            Event::KeepaliveSent { idle_ms } => {
                host.add(Metric::KeepaliveSent, 1);
                host.record(Metric::KeepaliveIdleMs, idle_ms);
                host.upstream_add(up, U::KeepaliveSent, 1);
            }
            Event::KeepaliveAnswered => host.add(Metric::KeepaliveAnswered, 1),
            Event::KeepaliveFailed => {
                host.add(Metric::KeepaliveFailed, 1);
                host.upstream_add(up, U::KeepaliveFailed, 1);
            }
            Event::KeepaliveRefused => host.add(Metric::KeepaliveRefused, 1),
            Event::IdleSurvived { idle_ms } => host.upstream_record(up, U::IdleSpellMs, idle_ms),
            Event::IdleDeath { idle_ms } => {
                host.upstream_add(up, U::IdleDeaths, 1);
                host.upstream_record(up, U::DeathIdleMs, idle_ms);
                log::info!(
                    "connection {id} to upstream {cluster}: the link died after {} of silence",
                    format_duration(idle_ms)
                );
            }
            Event::ReconnectSignal(r) => {
                host.add(Metric::ReconnectSignals, 1);
                host.upstream_add(up, U::ReconnectSignals, 1);
                log::info!(
                    "connection {id}: closing the client connection while idle: {}",
                    close_reason(r)
                );
            }
            // Counted by the learning, when its burst is judged an event.
            Event::BusyDeath => {}
            Event::ProbeHeld => host.add(Metric::ProbeHeld, 1),
            Event::ProbePassed { waited_ms } => {
                host.add(Metric::ProbePassed, 1);
                host.record(Metric::ProbeWaitMs, waited_ms);
            }
            Event::ProbeFailed => {
                host.add(Metric::ProbeFailed, 1);
                host.upstream_add(up, U::ProbeFailed, 1);
                log::info!("connection {id}: closing: the link did not answer the probe within ping_timeout; the held command was never sent");
            }
            Event::Passthrough(ref why) => {
                host.add(Metric::Passthrough, 1);
                if *why == PassthroughReason::Tls {
                    host.add(Metric::PassthroughTls, 1);
                }
                log::info!(
                    "connection {id}: passing through untouched from now on: {}",
                    passthrough_reason(why)
                );
            }
        }
    }
}
