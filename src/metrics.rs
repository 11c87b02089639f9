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
    PassthroughTls,
    Connections,
    KeepaliveIdleMs,
    ProbeHeld,
    ProbePassed,
    ProbeFailed,
    ProbeWaitMs,
    VmMemoryBytes,
}

impl Metric {
    pub const ALL: [Metric; 14] = [
        Metric::KeepaliveSent,
        Metric::KeepaliveAnswered,
        Metric::KeepaliveFailed,
        Metric::KeepaliveRefused,
        Metric::ReconnectSignals,
        Metric::Passthrough,
        Metric::PassthroughTls,
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
            Metric::PassthroughTls => "redis_idle_guard.passthrough.tls",
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

/// Stats kept per upstream cluster. Their names carry the cluster as an Envoy stats tag in the
/// form Istio uses (`upstream_cluster=.=<cluster>;.;`), so the tag regex
/// `(upstream_cluster=\.=(.*?);\.;)` (Istio: `extraStatTags: [upstream_cluster]`) turns
/// `redis_idle_guard.upstream.upstream_cluster=.=redis;.;idle_deaths` into
/// `redis_idle_guard.upstream.idle_deaths{upstream_cluster="redis"}`.
/// The tag (Prometheus label) that names an upstream stat's cluster.
pub const UPSTREAM_LABEL: &str = "upstream_cluster";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamMetric {
    ConnectionsOpened,
    KeepaliveSent,
    KeepaliveFailed,
    ReconnectSignals,
    ProbeFailed,
    IdleDeaths,
    IdleEvents,
    IdleSpellMs,
    DeathIdleMs,
    IdleCutoffMs,
    KeepaliveIntervalMs,
}

impl UpstreamMetric {
    pub const ALL: [UpstreamMetric; 11] = [
        UpstreamMetric::ConnectionsOpened,
        UpstreamMetric::KeepaliveSent,
        UpstreamMetric::KeepaliveFailed,
        UpstreamMetric::ReconnectSignals,
        UpstreamMetric::ProbeFailed,
        UpstreamMetric::IdleDeaths,
        UpstreamMetric::IdleEvents,
        UpstreamMetric::IdleSpellMs,
        UpstreamMetric::DeathIdleMs,
        UpstreamMetric::IdleCutoffMs,
        UpstreamMetric::KeepaliveIntervalMs,
    ];

    /// The last part of the name, after the tag.
    pub fn suffix(self) -> &'static str {
        match self {
            UpstreamMetric::ConnectionsOpened => "connections_opened",
            UpstreamMetric::KeepaliveSent => "keepalive.sent",
            UpstreamMetric::KeepaliveFailed => "keepalive.failed",
            UpstreamMetric::ReconnectSignals => "reconnect_signals",
            UpstreamMetric::ProbeFailed => "probe.failed",
            UpstreamMetric::IdleDeaths => "idle_deaths",
            UpstreamMetric::IdleEvents => "idle_events",
            UpstreamMetric::IdleSpellMs => "idle_spell_ms",
            UpstreamMetric::DeathIdleMs => "death_idle_ms",
            UpstreamMetric::IdleCutoffMs => "idle_cutoff_ms",
            UpstreamMetric::KeepaliveIntervalMs => "keepalive_interval_ms",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            UpstreamMetric::IdleCutoffMs | UpstreamMetric::KeepaliveIntervalMs => Kind::Gauge,
            UpstreamMetric::IdleSpellMs | UpstreamMetric::DeathIdleMs => Kind::Histogram,
            _ => Kind::Counter,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The name without the cluster, for a host whose stats take the cluster as a label
    /// ([`UPSTREAM_LABEL`]).
    pub fn labelled_name(self) -> String {
        format!("redis_idle_guard.upstream.{}", self.suffix())
    }

    /// The full stat name for `cluster`. A `;` in a cluster name would end the tag early, so it
    /// becomes `_`.
    pub fn name(self, cluster: &str) -> String {
        format!(
            "redis_idle_guard.upstream.upstream_cluster=.={};.;{}",
            cluster.replace(';', "_"),
            self.suffix()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names_carry_the_cluster_as_a_tag() {
        assert_eq!(
            UpstreamMetric::IdleDeaths.name("outbound|6379||redis.default.svc.cluster.local"),
            "redis_idle_guard.upstream.upstream_cluster=.=outbound|6379||redis.default.svc.cluster.local;.;idle_deaths"
        );
        assert_eq!(
            UpstreamMetric::ConnectionsOpened.name("a;b"),
            "redis_idle_guard.upstream.upstream_cluster=.=a_b;.;connections_opened"
        );
        for (i, m) in UpstreamMetric::ALL.iter().enumerate() {
            assert_eq!(m.index(), i);
        }
    }
}
