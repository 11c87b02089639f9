"""The two builds of the filter, as the lab loads them into Envoy.

- wasm: the proxy-wasm module (`make build`), `envoy.filters.network.wasm` with the V8 runtime;
- native: the Envoy dynamic module (`make build-native`), `envoy.filters.network.dynamic_modules`
  plus its bootstrap extension (per-upstream stats), both loading the one `.so` by its path.

Both take the same JSON configuration and keep the same stats; Envoy names the native build's
stats `dynamicmodulescustom.<name>` in /stats and `envoy_dynamicmodulescustom_<name>` in
/stats/prometheus (the Wasm build's: `wasmcustom.<name>` and `<name>`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from .procs import REPO_ROOT

DEFAULT_WASM = REPO_ROOT / "target" / "wasm32-unknown-unknown" / "release" / "redis_idle_guard.wasm"
DEFAULT_NATIVE = REPO_ROOT / "target" / "release" / "libredis_idle_guard.so"

# What Envoy puts in front of the native build's stat names in /stats/prometheus; the
# documented metric_relabel rule removes it (docs: "Wasm or native?").
NATIVE_PROMETHEUS_PREFIX = "envoy_dynamicmodulescustom_"


def default_wasm_path() -> Path:
    return Path(os.environ.get("REDIS_IDLE_GUARD_WASM", DEFAULT_WASM))


def default_native_path() -> Path:
    return Path(os.environ.get("REDIS_IDLE_GUARD_NATIVE", DEFAULT_NATIVE))


@dataclass(frozen=True)
class FilterModule:
    """One build of the filter; the kind follows from the file (.so: native). A native module
    without the companion bootstrap extension (the benchmarks' no-op) sets bootstrap=False."""

    path: Path
    bootstrap: bool = True

    @property
    def kind(self) -> str:
        return "native" if self.path.suffix == ".so" else "wasm"

    @property
    def native(self) -> bool:
        return self.kind == "native"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def stats_prefix(self) -> str:
        """Envoy's prefix of the filter's stats in /stats."""
        return "dynamicmodulescustom." if self.native else "wasmcustom."

    @property
    def log_component(self) -> str:
        """The Envoy log component of the filter's own log lines."""
        return "dynamic_modules" if self.native else "wasm"

    def exists(self) -> bool:
        return self.path.exists()

    def _dynamic_module_config(self) -> Dict[str, Any]:
        return {"module": {"local": {"filename": str(self.path.resolve())}}}

    def filter_config(self, plugin_config: Union[Mapping[str, Any], str, None],
                      fail_open: bool = True) -> Dict[str, Any]:
        """The listener filter entry that runs this build with `plugin_config`."""
        if plugin_config is None:
            value = ""
        elif isinstance(plugin_config, str):
            value = plugin_config  # raw, so tests can pass malformed JSON
        else:
            value = json.dumps(plugin_config)
        config = {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": value}
        if self.native:
            return {
                "name": "envoy.filters.network.dynamic_modules",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network"
                             ".dynamic_modules.v3.DynamicModuleNetworkFilter",
                    "dynamic_module_config": self._dynamic_module_config(),
                    "filter_name": "redis_idle_guard",
                    "filter_config": config,
                },
            }
        return {
            "name": "envoy.filters.network.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
                "config": {
                    "name": "redis_idle_guard",
                    "root_id": "redis_idle_guard",
                    "fail_open": fail_open,
                    "configuration": config,
                    "vm_config": {
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": str(self.path.resolve())}},
                    },
                },
            },
        }

    def bootstrap_extensions(self) -> List[Dict[str, Any]]:
        """What the Envoy bootstrap needs besides the filter (the native build's extension)."""
        if not self.native or not self.bootstrap:
            return []
        return [{
            "name": "envoy.bootstrap.dynamic_modules",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.bootstrap.dynamic_modules.v3"
                         ".DynamicModuleBootstrapExtension",
                "dynamic_module_config": self._dynamic_module_config(),
                "extension_name": "redis_idle_guard",
                "extension_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                     "value": ""},
            },
        }]

    def normalize_prometheus(self, text: str) -> str:
        """/stats/prometheus as a Prometheus with the documented relabel rule stores it: the
        native build's series under the same names as the Wasm build's."""
        if not self.native:
            return text
        return text.replace(NATIVE_PROMETHEUS_PREFIX + "redis_idle_guard", "redis_idle_guard")


def as_module(module: Union[FilterModule, str, Path, None]) -> Optional[FilterModule]:
    if module is None or isinstance(module, FilterModule):
        return module
    return FilterModule(Path(module))
