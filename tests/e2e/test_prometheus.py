"""(p) The filter's metrics as a real Prometheus reads them: every PromQL query in the docs,
the shipped alerting rules (envoy/prometheus/alerts.yaml) and every panel of the Grafana
dashboard (envoy/prometheus/grafana-dashboard.json) against a Prometheus 2.42 that scrapes a real
Envoy running the filter, once per build.

The native build is scraped with the relabel rule the docs give (read from docs/metrics.md), so
the queries, rules and panels, written with the Wasm build's names, serve both builds. The
traffic makes every documented signal move: keepalives, keepalive failures and idle deaths (a
frozen Redis), a probe failure, a reconnect signal and a passthrough (MONITOR). The alerts are
inactive while the traffic is healthy, and active (pending or firing) after the faults.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Dict, List

import yaml

from lab import RawConnection
from lab.procs import REPO_ROOT, wait_until
from lab.prometheus import Prometheus, envoy_target

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def docs_text() -> str:
    """README.md and docs/*.md, where the queries and the relabel rule are documented."""
    return "\n\n".join(page.read_text() for page in DOCS)
ALERTS = REPO_ROOT / "envoy" / "prometheus" / "alerts.yaml"
DASHBOARD = REPO_ROOT / "envoy" / "prometheus" / "grafana-dashboard.json"

# Probes after 300 ms of silence from Redis, keepalives after 1 s of quiet, 500 ms to answer:
# a frozen Redis costs every idle connection its link within 1.5 s.
GUARD = {"keepalive_interval": "1s", "ping_timeout": "500ms", "probe_after": "300ms"}
IDLE = 4  # idle connections that the frozen Redis kills
TARGET_LABELS = {"namespace": "lab"}  # plus pod: what Kubernetes discovery gives a mesh's series
# Grafana's interval variables, as a dashboard of the last minutes would fill them in.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1m"}
EXPECTED_ALERTS = {"RedisIdleGuardKeepaliveFailureRatioHigh", "RedisIdleGuardIdleDeathsRising",
                   "RedisIdleGuardPassthrough", "RedisIdleGuardProbeFailures"}


# -- what the documents say ------------------------------------------------------------------
def readme_promql(text: str) -> List[str]:
    """Every query of the docs' ```promql blocks (comment lines dropped; a query continues over
    lines until its parentheses balance) and the `code` spans of its "Prometheus examples:"
    paragraphs."""
    queries: List[str] = []
    for block in re.findall(r"^```promql\n(.*?)^```", text, re.S | re.M):
        current = ""
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            current = f"{current} {line.strip()}".strip()
            if current.count("(") == current.count(")"):
                queries.append(current)
                current = ""
        assert current == "", f"docs: a promql query with unbalanced parentheses: {current}"
    for paragraph in re.findall(r"^Prometheus examples:(.*?)\n\n", text, re.S | re.M):
        queries += re.findall(r"`([^`]+)`", paragraph)
    return queries


def documented_relabel(text: str) -> List[Dict[str, Any]]:
    """The docs' metric_relabel_configs for the native build (the ```yaml block naming
    dynamicmodulescustom), exactly as documented."""
    blocks = [b for b in re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M)
              if "metric_relabel_configs" in b and "dynamicmodulescustom" in b]
    assert len(blocks) == 1, f"docs: expected one relabel block for the native build: {blocks}"
    return yaml.safe_load(blocks[0])["metric_relabel_configs"]


def promised_labels(expr: str) -> List[str]:
    """The labels of the outermost `by (...)`: what each series of the result is keyed by."""
    m = re.search(r"\bby\s*\(([^)]*)\)", expr)
    return [label.strip() for label in m.group(1).split(",")] if m else []


def dashboard_targets(dashboard: Dict[str, Any]) -> List[tuple]:
    """(panel title, expr with Grafana's variables filled in) of every panel's targets."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']}: a variable the test does not fill: {expr}"
            out.append((panel["title"], expr))
    return out


def test_documents_hold_what_the_e2e_test_runs():
    """The parsers find what the documents hold (so the Prometheus test cannot pass vacuously),
    and the dashboard takes its datasource as the ${DS_PROMETHEUS} input and variable."""
    text = docs_text()
    queries = readme_promql(text)
    assert len(queries) >= 10, queries
    assert any("upstream_cluster" in q for q in queries), queries
    assert documented_relabel(text) == [{
        "source_labels": ["__name__"],
        "regex": "envoy_dynamicmodulescustom_(redis_idle_guard_.*)",
        "target_label": "__name__"}]
    dashboard = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"])
    exprs = " ".join(expr for _, expr in dashboard_targets(dashboard))
    for metric in ("keepalive_sent", "keepalive_failed", "upstream_idle_deaths",
                   "upstream_idle_cutoff_ms", "upstream_keepalive_interval_ms",
                   "reconnect_signals", "probe_failed", "passthrough", "vm_memory_bytes"):
        assert f"redis_idle_guard_{metric}" in exprs, f"no dashboard panel shows {metric}"
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS


# -- the traffic -----------------------------------------------------------------------------
def healthy_traffic(envoy, prom: Prometheus, idle: List[RawConnection],
                    prober: RawConnection) -> None:
    """Connections that keep idle links alive, until Prometheus has their keepalives."""
    for c in idle + [prober]:
        assert c.command("PING").raw == b"+PONG\r\n"
    prom.wait_for("redis_idle_guard_keepalive_sent",
                  lambda s: s and s[0]["value"] >= 2 * IDLE, timeout=15)
    prom.wait_for("redis_idle_guard_upstream_keepalive_sent", bool, timeout=5)


def faults(envoy, redis, idle: List[RawConnection], prober: RawConnection) -> Dict[str, float]:
    """A passthrough (MONITOR), then Redis frozen: the prober's next command is held behind a
    probe that fails, and every idle connection's keepalive goes unanswered (idle deaths,
    reconnect signals). Returns the filter's stats from Envoy afterwards."""
    with RawConnection(envoy.address) as monitor:
        assert monitor.command("MONITOR").raw == b"+OK\r\n"
    envoy.wait_for_guard_stat("passthrough", lambda v: v >= 1, 5)
    assert prober.command("PING").raw == b"+PONG\r\n"
    with redis.frozen():
        time.sleep(0.45)  # beyond probe_after, before the keepalive: this command is probed
        prober.send_command("GET", "k")
        for c in [prober] + idle:
            _, got, _ = c.wait_eof(timeout=6)
            assert got == b"", "a client got bytes from a frozen Redis"
    stats = envoy.guard_stats()
    print("filter stats after the faults:", stats)
    assert stats["probe.failed"] == 1, stats
    assert stats["keepalive.failed"] >= IDLE and stats["reconnect_signals"] >= IDLE, stats
    return stats


# -- the test --------------------------------------------------------------------------------
def may_read_zero(expr: str) -> bool:
    """A documented query that may read 0 after the faults: the learned cutoff (nothing to learn at
    a fixed interval)."""
    return "idle_cutoff_ms" in expr


def check_readme_queries(prom: Prometheus, pod: str, native: bool) -> None:
    """Every documented query returns series with the labels it groups by, and (but for
    may_read_zero) shows the traffic: each signal moved."""
    for expr in readme_promql(docs_text()):
        if "redis_idle_guard_" not in expr:
            # Another component's metric (istio-agent's): it must parse and run; no such
            # component runs in the lab, so its series are absent here.
            print(f"documented query (not the filter's metric, runs empty here): {expr}")
            prom.query(expr)
            continue
        samples = prom.wait_for(expr, bool, timeout=5)
        print(f"documented query: {expr}\n  -> {samples}")
        for label in promised_labels(expr):
            for s in samples:
                assert s["metric"].get(label), f"{expr}: a series without {label}: {s}"
        if "pod" in promised_labels(expr):
            assert {s["metric"]["pod"] for s in samples} == {pod}, (expr, samples)
        if not may_read_zero(expr):
            assert any(s["value"] > 0 for s in samples), f"{expr}: the faults do not show"


def check_alerts(prom: Prometheus) -> None:
    def active():
        names = {a["labels"]["alertname"] for a in prom.alerts()}
        return EXPECTED_ALERTS <= names
    try:
        wait_until(active, 15, 0.2, f"alerts {sorted(EXPECTED_ALERTS)} active")
    finally:
        print("alerts:", [(a["labels"]["alertname"], a["state"], a["labels"].get(
            "upstream_cluster") or a["labels"].get("pod")) for a in prom.alerts()])
    for a in prom.alerts():
        if a["labels"]["alertname"] == "RedisIdleGuardIdleDeathsRising":
            assert a["labels"]["upstream_cluster"] == "redis", a
    for rule in prom.rules():
        assert rule["health"] == "ok", rule


def check_dashboard(prom: Prometheus) -> None:
    for title, expr in dashboard_targets(json.loads(DASHBOARD.read_text())):
        samples = prom.wait_for(expr, bool, timeout=5)
        print(f"dashboard '{title}': {expr}\n  -> {samples}")


def test_prometheus_reads_the_filter(lab, module):
    """Healthy traffic (no alert), then the faults: the documented queries, the alerts and the
    dashboard's panels all show them, through a real Prometheus."""
    redis = lab.redis()
    envoy = lab.envoy(redis, module=module, plugin_config=GUARD, name=f"envoy-{module.kind}")
    relabel = documented_relabel(docs_text()) if module.native else None
    target = envoy_target(envoy, pod=envoy.name, **TARGET_LABELS)
    prom = Prometheus([target], rule_files=[ALERTS], metric_relabel_configs=relabel)
    idle: List[RawConnection] = []
    prober = None
    with prom:
        try:
            prom.wait_for_targets_up()
            idle = [RawConnection(envoy.address) for _ in range(IDLE)]
            prober = RawConnection(envoy.address)
            healthy_traffic(envoy, prom, idle, prober)
            prom.wait_for_evaluation(after=time.time())
            assert prom.alerts() == [], "an alert is active on healthy traffic"

            faults(envoy, redis, idle, prober)
            prom.wait_for("redis_idle_guard_probe_failed", lambda s: s and s[0]["value"] >= 1)
            prom.wait_for("sum(redis_idle_guard_upstream_idle_deaths)",
                          lambda s: s and s[0]["value"] >= IDLE)

            check_readme_queries(prom, envoy.name, module.native)
            check_alerts(prom)
            check_dashboard(prom)
            if module.native:  # the documented rule renamed every series; none is left behind
                assert "envoy_dynamicmodulescustom_redis_idle_guard_" in envoy.prometheus_text(
                    raw=True)
                assert prom.query(
                    '{__name__=~"envoy_dynamicmodulescustom_redis_idle_guard_.*"}') == []
        except BaseException:
            print(f"----- {prom!r} log tail ({prom.workdir}) -----\n"
                  + "\n".join(prom.log_text().splitlines()[-30:]))
            raise
        finally:
            for c in idle + ([prober] if prober else []):
                c.close()
