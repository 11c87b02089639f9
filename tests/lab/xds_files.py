"""Envoys that take part of their configuration from watched files, as from a control plane,
so a test can change the filter's configuration or module while connections are open:

- LdsEnvoy: the listener (LDS). The bootstrap has no static listener;
  `dynamic_resources.lds_config.path_config_source` points at <workdir>/lds/listeners.json,
  its directory watched. The listener keeps one fixed port, so an update that changes only the
  filter chain is applied in place (the old chain drains, the socket stays).
- EcdsEnvoy: only the filter's own configuration (ECDS, what Istio uses for a WasmPlugin): the
  listener names the filter and takes its typed_config from <workdir>/ecds/filter.json.

update() writes the new file next to the old one and renames it into place (an atomic replace:
Envoy never reads half a file), then waits until Envoy has applied it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict

from .envoy_proxy import EnvoyProxy
from .procs import LabError, free_port

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
EXTENSION_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
FILTER_NAME = "redis_idle_guard"


def replace_file(path: Path, doc: Dict[str, Any]) -> None:
    """Write `doc` as JSON next to `path`, then rename it into place."""
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.rename(tmp, path)


def file_source(path: Path) -> Dict[str, Any]:
    """A config source that reads `path` and watches its directory for renames."""
    return {"resource_api_version": "V3",
            "path_config_source": {"path": str(path),
                                   "watched_directory": {"path": str(path.parent)}}}


def set_attributes(envoy: EnvoyProxy, attributes: Dict[str, Any]) -> None:
    for name, value in attributes.items():
        if not hasattr(envoy, name):
            raise LabError(f"{type(envoy).__name__} has no attribute {name!r}")
        setattr(envoy, name, value)


def wait_for_version(read_version, version: int, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if str(read_version()) == str(version):
            return
        time.sleep(0.05)
    raise LabError(f"{what} version {version} not applied in {timeout}s")


class LdsEnvoy(EnvoyProxy):
    """EnvoyProxy with its listener in a watched file. drain_time_s is Envoy's --drain-time-s:
    how long connections on a replaced filter chain live on (Envoy's default is 600 s, Istio's
    45 s)."""

    def __init__(self, upstream, *, drain_time_s: float = 5, **kwargs):
        extra = list(kwargs.pop("extra_args", ())) + ["--drain-time-s", f"{drain_time_s:g}"]
        super().__init__(upstream, extra_args=extra, **kwargs)
        self.drain_time_s = drain_time_s
        self.port = free_port()
        self.version = 0

    @property
    def lds_file(self) -> Path:
        return self.workdir / "lds" / "listeners.json"

    def listener(self) -> Dict[str, Any]:
        listener = super().bootstrap()["static_resources"]["listeners"][0]
        listener["address"]["socket_address"]["port_value"] = self.port
        return listener

    def _write_listener(self) -> None:
        self.version += 1
        replace_file(self.lds_file, {"version_info": str(self.version),
                                     "resources": [{"@type": LISTENER_TYPE, **self.listener()}]})

    def bootstrap(self) -> Dict[str, Any]:
        boot = super().bootstrap()
        del boot["static_resources"]["listeners"]
        self._write_listener()  # start() calls this once its workdir exists
        boot["dynamic_resources"] = {"lds_config": file_source(self.lds_file)}
        return boot

    def lds_stats(self) -> Dict[str, Any]:
        """listener_manager.* (LDS updates, in-place updates, chains draining)."""
        prefix = "listener_manager."
        return {k[len(prefix):]: v for k, v in self.stats(r"^listener_manager\.").items()}

    def update(self, timeout: float = 10.0, **attributes: Any) -> None:
        """Change the listener (module=, plugin_config=, idle_timeout=, ...: EnvoyProxy's
        attributes), rename it into place, and wait until Envoy accepted it."""
        set_attributes(self, attributes)
        self._write_listener()
        wait_for_version(lambda: self.lds_stats().get("lds.version_text"), self.version,
                         f"{self.name}: listener", timeout)


class EcdsEnvoy(EnvoyProxy):
    """EnvoyProxy whose filter takes its typed_config from a watched file (ECDS); the rest of the
    listener is static. Needs a module."""

    def __init__(self, upstream, **kwargs):
        super().__init__(upstream, **kwargs)
        if self.module is None:
            raise LabError("EcdsEnvoy needs a module")
        self.version = 0

    @property
    def ecds_file(self) -> Path:
        return self.workdir / "ecds" / "filter.json"

    def _write_filter(self) -> None:
        self.version += 1
        typed = self.module.filter_config(self.plugin_config, self.fail_open)["typed_config"]
        replace_file(self.ecds_file, {"version_info": str(self.version), "resources": [
            {"@type": EXTENSION_TYPE, "name": FILTER_NAME, "typed_config": typed}]})

    def bootstrap(self) -> Dict[str, Any]:
        boot = super().bootstrap()
        filters = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
        self._write_filter()  # start() calls this once its workdir exists
        filters[0] = {"name": FILTER_NAME, "config_discovery": {
            "config_source": file_source(self.ecds_file),
            "type_urls": [filters[0]["typed_config"]["@type"]],
        }}
        return boot

    def update(self, timeout: float = 10.0, **attributes: Any) -> None:
        """Change the filter (plugin_config=, module=), rename it into place, and wait until
        Envoy accepted it."""
        set_attributes(self, attributes)
        self._write_filter()
        stat = f"extension_config_discovery.network_filter.{FILTER_NAME}.version_text"
        wait_for_version(lambda: self.stats("^" + stat.replace(".", r"\.")).get(stat),
                         self.version, f"{self.name}: filter", timeout)
