"""(f) The filter's stats under their documented names, in /stats and /stats/prometheus: the
same names in both builds, behind Envoy's prefix for each (wasmcustom., dynamicmodulescustom.)."""

from __future__ import annotations

from lab import RawConnection
from lab.procs import wait_until

COUNTERS = ["keepalive.sent", "keepalive.answered", "keepalive.failed", "keepalive.refused",
            "reconnect_signals", "passthrough", "probe.held", "probe.passed", "probe.failed"]
GAUGES = ["connections", "vm_memory_bytes"]
HISTOGRAMS = ["keepalive.idle_ms", "probe.wait_ms"]


def prom(name: str) -> str:
    return ("redis_idle_guard." + name).replace(".", "_")


def test_stats_names_and_values(lab, module):
    redis = lab.redis()
    envoy = lab.envoy(redis, module=module, plugin_config={"keepalive_interval": "200ms"})
    conns = [RawConnection(envoy.address) for _ in range(3)]
    try:
        for c in conns:
            assert c.command("PING").raw == b"+PONG\r\n"
        envoy.wait_for_guard_stat("connections", lambda v: v == 3, 3)
        envoy.wait_for_guard_stat("keepalive.answered", lambda v: v >= 3, 3)

        # /stats: <namespace>.redis_idle_guard.<name>
        stats = envoy.stats(r"redis_idle_guard")
        for name in COUNTERS + GAUGES:
            assert f"{module.stats_prefix}redis_idle_guard.{name}" in stats, sorted(stats)

        # /stats/prometheus: <name> with dots → underscores, right types (the native build's
        # behind Envoy's prefix, which the documented relabel rule removes).
        if module.native:
            raw = envoy.prometheus_text(raw=True)
            assert "\nenvoy_dynamicmodulescustom_redis_idle_guard_keepalive_sent{} " in raw, raw
        types = envoy.prometheus_types()
        for name in COUNTERS:
            assert types.get(prom(name)) == "counter", (name, types.get(prom(name)))
        for name in GAUGES:
            assert types.get(prom(name)) == "gauge", (name, types.get(prom(name)))
        for name in HISTOGRAMS:
            assert types.get(prom(name)) == "histogram", (name, types.get(prom(name)))

        # Histogram samples appear after a stats flush (1 s in the lab bootstrap).
        samples = wait_until(
            lambda: (s := envoy.prometheus_samples()).get(prom("keepalive.idle_ms") + "_count", 0)
            >= 1 and s, 5, 0.2, "idle_ms histogram samples")
        assert samples[prom("connections")] == 3
        # Wasm: one VM per worker plus the main thread's, each at least one 64 KiB page;
        # native: the module's heap (three sessions at least).
        assert samples[prom("vm_memory_bytes")] >= (1000 if module.native else 65536)
        assert samples[prom("keepalive.sent")] >= 3
        assert any(k.startswith(prom("keepalive.idle_ms") + "_bucket") for k in samples)
        assert prom("keepalive.idle_ms") + "_sum" in samples
        print({k: v for k, v in samples.items() if k.startswith("redis_idle_guard")
               and "_bucket" not in k})
    finally:
        for c in conns:
            c.close()
    envoy.wait_for_guard_stat("connections", lambda v: v == 0, 3)
