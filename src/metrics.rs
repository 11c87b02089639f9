//! The filter's Envoy stats. Names appear in `/stats` as `wasmcustom.<name>` and in
//! `/stats/prometheus` with dots turned into underscores.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    KeepaliveSent,
    KeepaliveAnswered,
    KeepaliveFailed,
    KeepaliveRefused,
    ReconnectSignals,
    Passthrough,
    Connections,
    KeepaliveIdleMs,
    ProbeHeld,
    ProbePassed,
    ProbeFailed,
    ProbeWaitMs,
    VmMemoryBytes,
}

impl Metric {
    pub const ALL: [Metric; 13] = [
        Metric::KeepaliveSent,
        Metric::KeepaliveAnswered,
        Metric::KeepaliveFailed,
        Metric::KeepaliveRefused,
        Metric::ReconnectSignals,
        Metric::Passthrough,
        Metric::Connections,
        Metric::KeepaliveIdleMs,
        Metric::ProbeHeld,
        Metric::ProbePassed,
        Metric::ProbeFailed,
        Metric::ProbeWaitMs,
        Metric::VmMemoryBytes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::KeepaliveSent => "redis_idle_guard.keepalive.sent",
            Metric::KeepaliveAnswered => "redis_idle_guard.keepalive.answered",
            Metric::KeepaliveFailed => "redis_idle_guard.keepalive.failed",
            Metric::KeepaliveRefused => "redis_idle_guard.keepalive.refused",
            Metric::ReconnectSignals => "redis_idle_guard.reconnect_signals",
            Metric::Passthrough => "redis_idle_guard.passthrough",
            Metric::Connections => "redis_idle_guard.connections",
            Metric::KeepaliveIdleMs => "redis_idle_guard.keepalive.idle_ms",
            Metric::ProbeHeld => "redis_idle_guard.probe.held",
            Metric::ProbePassed => "redis_idle_guard.probe.passed",
            Metric::ProbeFailed => "redis_idle_guard.probe.failed",
            Metric::ProbeWaitMs => "redis_idle_guard.probe.wait_ms",
            Metric::VmMemoryBytes => "redis_idle_guard.vm_memory_bytes",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Metric::Connections | Metric::VmMemoryBytes => Kind::Gauge,
            Metric::KeepaliveIdleMs | Metric::ProbeWaitMs => Kind::Histogram,
            _ => Kind::Counter,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}
