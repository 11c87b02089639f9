"""A throw-away Prometheus (Debian's `prometheus` 2.42, `make setup-apt`) that scrapes lab Envoys'
/stats/prometheus every second, and a small client for its HTTP API (/api/v1/query, alerts,
rules).

It shows the filter's metrics as an operator's Prometheus stores them: after scraping, after
metric_relabel_configs (the native build's documented rule), and through PromQL, recording and
alerting rules (envoy/prometheus/alerts.yaml). Each instance has its own directory (config, TSDB,
log) under the run's lab dir and listens on a free port of 127.0.0.1 only; it is a
ManagedProcess, so it is stopped like every lab process.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .envoy_proxy import EnvoyProxy
from .procs import (LOOPBACK, LabError, ManagedProcess, free_port, is_lab_address, unique_workdir,
                    wait_until)

# API requests must never go through an HTTP proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PrometheusError(LabError):
    """Prometheus did not start, or the API answered with an error."""


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(path).exists():
        raise PrometheusError("prometheus not found: run `make setup-apt` (Debian package "
                              "prometheus)")
    return path


@dataclass(frozen=True)
class ScrapeTarget:
    """One endpoint to scrape (e.g. an Envoy's admin address) and the target labels to give its
    series, as service discovery would (e.g. namespace and pod)."""

    address: Tuple[str, int]
    labels: Mapping[str, str] = field(default_factory=dict)


def envoy_target(envoy: EnvoyProxy, **labels: str) -> ScrapeTarget:
    """An EnvoyProxy's admin endpoint as a target (its /stats/prometheus is the metrics path)."""
    if envoy.admin_port is None:
        raise LabError(f"{envoy!r} has no admin port yet: start it first")
    return ScrapeTarget((LOOPBACK, envoy.admin_port), dict(labels))


class Prometheus:
    """prometheus with one scrape job ("envoy", metrics path /stats/prometheus) over `targets`,
    scrape and rule evaluation every second, and `rule_files` loaded.

    >>> with Prometheus([envoy_target(envoy, pod="a")]) as prom:
    ...     prom.query("redis_idle_guard_connections")
    """

    def __init__(self, targets: Sequence[ScrapeTarget], *,
                 rule_files: Sequence[Path] = (),
                 metric_relabel_configs: Optional[Sequence[Mapping[str, Any]]] = None,
                 interval: str = "1s", metrics_path: str = "/stats/prometheus",
                 name: str = "prometheus"):
        for t in targets:
            if not is_lab_address(t.address[0]):
                raise LabError(f"the lab scrapes only lab addresses, not {t.address[0]}")
        self.targets = list(targets)
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.metric_relabel_configs = [dict(r) for r in metric_relabel_configs or []]
        self.interval = interval
        self.metrics_path = metrics_path
        self.name = name
        self.port: Optional[int] = None
        self.workdir: Optional[Path] = None
        self.process: Optional[ManagedProcess] = None

    # -- configuration ---------------------------------------------------------------------
    def config(self) -> Dict[str, Any]:
        """prometheus.yml (written as JSON, which is YAML)."""
        job: Dict[str, Any] = {
            "job_name": "envoy",
            "metrics_path": self.metrics_path,
            "scrape_interval": self.interval,
            "scrape_timeout": self.interval,
            "static_configs": [{"targets": ["%s:%d" % t.address], "labels": dict(t.labels)}
                               for t in self.targets],
        }
        if self.metric_relabel_configs:
            job["metric_relabel_configs"] = self.metric_relabel_configs
        return {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [job],
        }

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, ready_timeout: float = 20.0) -> "Prometheus":
        self.workdir = unique_workdir(self.name)
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(json.dumps(self.config(), indent=2))
        for _attempt in range(5):  # another process may take the free port before we bind it
            port = free_port()
            argv = [prometheus_binary(), f"--config.file={cfg}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address={LOOPBACK}:{port}",
                    "--storage.tsdb.retention.time=1h", "--log.level=info"]
            self.process = ManagedProcess(f"{self.name}:{port}", argv,
                                          self.workdir / "prometheus.log",
                                          cwd=self.workdir).start()
            self.port = port
            if self._wait_ready(ready_timeout):
                return self
            self.process.stop()
            if "address already in use" not in self.log_text():
                break
        raise PrometheusError(f"{self.name} did not start; log tail:\n{self.log_text()[-3000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.alive():
                return False
            try:
                if self._get("/-/ready", timeout=1.0)[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> "Prometheus":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.process.log_text() if self.process else ""

    # -- HTTP API --------------------------------------------------------------------------
    def _get(self, path: str, timeout: float = 5.0) -> Tuple[int, str]:
        url = f"http://{LOOPBACK}:{self.port}{path}"
        try:
            with _opener.open(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; its `data`, or PrometheusError with Prometheus's own message."""
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        status, body = self._get(f"/api/v1/{path}{query}")
        try:
            doc = json.loads(body)
        except ValueError:
            raise PrometheusError(f"GET /api/v1/{path} → {status}: {body[:300]}") from None
        if doc.get("status") != "success":
            raise PrometheusError(f"GET /api/v1/{path}{query} → {status}: "
                                  f"{doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> List[Dict[str, Any]]:
        """An instant query now: the vector's samples as {"metric": {labels}, "value": float}
        (a scalar result is one sample without labels)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "vector":
            return [{"metric": s["metric"], "value": float(s["value"][1])} for s in data["result"]]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": float(data["result"][1])}]
        raise PrometheusError(f"{expr!r}: unexpected result type {data['resultType']}")

    def wait_for(self, expr: str, predicate: Callable[[List[Dict[str, Any]]], object],
                 timeout: float = 10.0) -> List[Dict[str, Any]]:
        """Poll an instant query until predicate(samples) holds; return the samples."""
        def check():
            samples = self.query(expr)
            return (samples,) if predicate(samples) else None
        return wait_until(check, timeout, 0.2, f"{self.name}: {expr}")[0]

    def wait_for_targets_up(self, timeout: float = 10.0) -> None:
        """Every target scraped successfully at least once."""
        def up():
            active = self.api("targets", state="active")["activeTargets"]
            return len(active) == len(self.targets) and all(t["health"] == "up" for t in active)
        wait_until(up, timeout, 0.2, f"{self.name}: every target up")

    def rules(self) -> List[Dict[str, Any]]:
        """Every loaded rule (with health, lastError, state, lastEvaluation)."""
        return [r for g in self.api("rules")["groups"] for r in g["rules"]]

    def alerts(self) -> List[Dict[str, Any]]:
        """Active alerts (pending or firing), each with labels and state."""
        return self.api("alerts")["alerts"]

    def wait_for_evaluation(self, after: float, timeout: float = 10.0) -> None:
        """Until every rule has been evaluated after the wall-clock time `after`."""
        def evaluated():
            rules = self.rules()
            return rules and all(_timestamp(r["lastEvaluation"]) > after for r in rules)
        wait_until(evaluated, timeout, 0.2, f"{self.name}: rules evaluated")

    def __repr__(self) -> str:
        return f"<Prometheus {self.name} port={self.port} {self.process!r}>"


def _timestamp(rfc3339: str) -> float:
    """Prometheus's RFC 3339 times carry nanoseconds; Python 3.11 parses microseconds."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", rfc3339).replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()
