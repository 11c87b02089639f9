"""(m) Manifests: what a mesh will accept from envoy/istio/, and every Envoy config under envoy/.

- Every YAML document in envoy/istio/ validates against Istio's own CRD schemas (vendored in
  tests/manifests/, see the header there) as the Kubernetes API server would: OpenAPI types,
  enums, bounds, patterns, the CEL rules the documents reach, and unknown fields. The API server
  silently prunes unknown fields from structural schemas; a pruned field is a setting that never
  reaches Istio, so here it is an error (except under `x-kubernetes-preserve-unknown-fields`,
  i.e. WasmPlugin.pluginConfig and EnvoyFilter patch values, which are checked by Envoy below).
- The fields that matter for this filter have the values the docs promise; the ServiceEntry
  claims the WasmPlugin's port for a Redis outside the mesh, and the Sidecar example in its
  comments validates too.
- The WasmPlugin's pluginConfig, serialized as istiod does (JSON in a StringValue), and the
  EnvoyFilter's patch value, both run through `envoy --mode validate` with the built module, which
  runs the module's configure step: an unknown field or a bad value fails there.
- Every envoy/*.yaml passes `envoy --mode validate` from the repository root.
- The Dockerfile packages the module the way istio-agent extracts it, checked by building the
  same image as an OCI image layout by hand and extracting it as istio-agent does.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import ipaddress
import json
import posixpath
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import yaml
from jsonschema import Draft7Validator

from lab.envoy_proxy import envoy_binary
from lab.procs import REPO_ROOT

ISTIO_DIR = REPO_ROOT / "envoy" / "istio"


@pytest.fixture(scope="session")
def wasm(wasm_module) -> Path:
    """The Wasm build, which the Istio manifests ship."""
    return wasm_module.path
CRD_FILE = REPO_ROOT / "tests" / "manifests" / "istio-crds-1.30.3.yaml"
DR_FILE, DR_TLS_FILE = "destinationrule.yaml", "destinationrule-tls.yaml"  # one is used, not both
REDIS_PORT = 6379
DEFAULT_MAX_KEEPALIVE_INTERVAL = "15s"  # src/config.rs, DEFAULT_MAX_KEEPALIVE


# -- loading ---------------------------------------------------------------------------------

def _manifest_docs() -> List[Tuple[str, int, Dict[str, Any]]]:
    docs = []
    for path in sorted(ISTIO_DIR.glob("*.yaml")) + sorted(ISTIO_DIR.glob("*.yml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((path.name, i, doc))
    return docs


MANIFESTS = _manifest_docs()


def _doc_id(entry) -> str:
    name, i, doc = entry
    return f"{name}#{i}:{doc.get('kind', '?')}" if isinstance(doc, dict) else f"{name}#{i}"


def _crds() -> Dict[Tuple[str, str], Dict[str, Any]]:
    """(group, kind) -> CRD."""
    out = {}
    for crd in yaml.safe_load_all(CRD_FILE.read_text()):
        if crd:
            out[(crd["spec"]["group"], crd["spec"]["names"]["kind"])] = crd
    return out


CRDS = _crds()


def _only(kind: str, file: Optional[str] = None) -> Dict[str, Any]:
    found = [doc for name, _, doc in MANIFESTS if isinstance(doc, dict) and doc.get("kind") == kind
             and file in (None, name)]
    where = f"envoy/istio/{file or ''}"
    assert len(found) == 1, f"expected exactly one {kind} in {where}, found {len(found)}"
    return found[0]


# -- schema validation -----------------------------------------------------------------------

def _closed(schema: Any) -> Any:
    """The schema with unknown fields forbidden wherever the API server would prune them: every
    object schema that lists `properties`, has no `additionalProperties` (a map) and does not say
    `x-kubernetes-preserve-unknown-fields`."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _walk_rules(schema: Dict[str, Any], value: Any,
                path: str) -> Iterator[Tuple[str, str, str, Any]]:
    """(path, rule, message, value) for every CEL rule (x-kubernetes-validations) that applies to
    a value present in the document."""
    for v in schema.get("x-kubernetes-validations", []):
        yield path, " ".join(v["rule"].split()), v.get("message", ""), value
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key, item in value.items():
            sub = props.get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                yield from _walk_rules(sub, item, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _walk_rules(schema["items"], item, f"{path}[{i}]")


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration_seconds(text: str) -> float:
    """A Go/CEL duration string ("1h", "1m30s", "250ms") in seconds; ValueError if malformed."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"not a duration: {text!r}")
    return sign * total


def _url_scheme_ok(url: str) -> bool:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    return (m.group(1).lower() if m else "") in {"", "http", "https", "oci", "file"}


# The CEL rules our documents reach, as Python. A rule not listed here makes the test fail, so a
# new field in a manifest cannot slip past unchecked.
CEL_RULES = {
    "duration(self) >= duration('1ms')":
        lambda v: go_duration_seconds(v) >= 0.001,
    "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) "
    "+ (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda v: sum(k in v for k in ("selector", "targetRef", "targetRefs")) <= 1,
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda v: sum(k in v for k in ("workloadSelector", "targetRefs")) <= 1,
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : '
    '(isURL("http://" + self) && '
    'url("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])':
        _url_scheme_ok,
    'self.all(key, !key.contains("*"))':
        lambda v: all("*" not in k for k in v),
    "self.all(key, key.size() != 0)":
        lambda v: all(len(k) != 0 for k in v),
    '!self.contains("*")':
        lambda v: "*" not in v,
    'has(self.context) ? ((self.context == "WAYPOINT") ? has(self.waypoint) : !has(self.waypoint)) '
    ': !has(self.waypoint)':
        lambda v: ("waypoint" in v) == (v.get("context") == "WAYPOINT"),
    # ServiceEntry
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1":
        lambda v: sum(k in v for k in ("workloadSelector", "endpoints")) <= 1,
    '!((has(self.addresses) ? self.addresses : []).exists(k, k.contains("/")) && '
    '!((has(self.resolution) ? self.resolution : "NONE") in ["STATIC", "NONE"]))':
        lambda v: not (any("/" in a for a in v.get("addresses", []))
                       and v.get("resolution", "NONE") not in ("STATIC", "NONE")),
    '((has(self.resolution) ? self.resolution : "NONE") == "NONE") ? !has(self.endpoints) : true':
        lambda v: v.get("resolution", "NONE") != "NONE" or "endpoints" not in v,
    '((has(self.resolution) ? self.resolution : "") == "DNS_ROUND_ROBIN") ? '
    '((has(self.endpoints) ? self.endpoints : []).size() <= 1) : true':
        lambda v: v.get("resolution") != "DNS_ROUND_ROBIN" or len(v.get("endpoints", [])) <= 1,
    'self != "*"':
        lambda v: v != "*",
    "self.all(l1, self.exists_one(l2, l1.number == l2.number))":
        lambda v: all(sum(p.get("number") == q.get("number") for q in v) == 1 for p in v),
    "0 < self && self <= 65535":
        lambda v: 0 < v <= 65535,
}


def _schema_errors(doc: Dict[str, Any]) -> List[str]:
    errors = []
    api_version = doc.get("apiVersion", "")
    group, _, version = api_version.rpartition("/")
    crd = CRDS.get((group, doc.get("kind")))
    if crd is None:
        return [f"no vendored CRD for apiVersion={api_version!r} kind={doc.get('kind')!r}"]
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if version not in versions or not versions[version].get("served"):
        return [f"{api_version} {doc['kind']}: version {version!r} is not served "
                f"(served: {[n for n, v in versions.items() if v.get('served')]})"]
    if versions[version].get("deprecated"):
        errors.append(f"{api_version} {doc['kind']} is deprecated: "
                      f"{versions[version].get('deprecationWarning', '')}")
    extra = set(doc) - {"apiVersion", "kind", "metadata", "spec"}
    if extra:
        errors.append(f"unknown top-level fields {sorted(extra)}")
    meta = doc.get("metadata") or {}
    name = meta.get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name):
        errors.append(f"metadata.name {name!r} is not a DNS-1123 subdomain")
    if crd["spec"]["scope"] == "Namespaced" and not meta.get("namespace"):
        errors.append("metadata.namespace is missing (say where the example goes)")

    schema = versions[version]["schema"]["openAPIV3Schema"]
    body = {"spec": doc.get("spec")}
    for err in sorted(Draft7Validator(_closed(schema)).iter_errors(body), key=str):
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        errors.append(f"{where}: {err.message}")
    for path, rule, message, value in _walk_rules(schema, body, ""):
        check = CEL_RULES.get(rule)
        if check is None:
            errors.append(f"{path}: CEL rule not handled by this test, add it to CEL_RULES: {rule}")
            continue
        try:
            ok = check(value)
        except (ValueError, TypeError) as exc:
            ok, message = False, f"{message} ({exc})"
        if not ok:
            errors.append(f"{path}: {message} [{rule}] value={value!r}")
    return errors


def test_manifests_exist():
    kinds = sorted(doc.get("kind") for _, _, doc in MANIFESTS)
    assert kinds == ["DestinationRule", "DestinationRule", "EnvoyFilter", "ServiceEntry",
                     "WasmPlugin"], kinds


@pytest.mark.parametrize("entry", MANIFESTS, ids=[_doc_id(e) for e in MANIFESTS])
def test_manifest_matches_istio_crd_schema(entry):
    name, i, doc = entry
    assert isinstance(doc, dict), f"{name} document {i} is not a mapping"
    errors = _schema_errors(doc)
    assert not errors, f"{name} document {i} ({doc.get('kind')}):\n  " + "\n  ".join(errors)


def test_schema_check_catches_mistakes():
    """Negative controls: the checks above do reject what the API server would."""
    wasm = copy.deepcopy(_only("WasmPlugin"))
    wasm["spec"]["failStrategy"] = "FAIL_OPEN_PLEASE"
    wasm["spec"]["match"][0]["ports"][0]["numbr"] = 6379
    wasm["spec"]["url"] = "ftp://registry/image"
    errors = "\n".join(_schema_errors(wasm))
    assert "FAIL_OPEN_PLEASE" in errors and "numbr" in errors and "schema one of" in errors, errors

    dr = copy.deepcopy(_only("DestinationRule", DR_FILE))
    dr["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["tcpKeepalive"]["time"] = "0.1ms"
    dr["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["keepalive"] = True
    errors = "\n".join(_schema_errors(dr))
    assert "greater than 1ms" in errors and "keepalive" in errors, errors

    ef = copy.deepcopy(_only("EnvoyFilter"))
    ef["spec"]["configPatches"][0]["match"]["context"] = "OUTBOUND"
    assert any("OUTBOUND" in e for e in _schema_errors(ef))


# -- the fields that matter ------------------------------------------------------------------

def test_wasmplugin_fields():
    spec = _only("WasmPlugin")["spec"]
    assert spec["type"] == "NETWORK"
    assert spec["match"] == [{"mode": "CLIENT", "ports": [{"number": REDIS_PORT}]}]
    assert spec["failStrategy"] == "FAIL_OPEN"
    assert spec["url"].startswith("oci://")
    assert spec["pluginName"] == "redis_idle_guard"
    assert spec.get("phase", "UNSPECIFIED_PHASE") == "UNSPECIFIED_PHASE"
    assert spec["selector"]["matchLabels"], "canary by workload label"
    assert isinstance(spec["pluginConfig"], dict) and spec["pluginConfig"]


def _envoyfilter_patch() -> Dict[str, Any]:
    spec = _only("EnvoyFilter")["spec"]
    assert len(spec["configPatches"]) == 1
    return spec["configPatches"][0]


def test_envoyfilter_fields():
    patch = _envoyfilter_patch()
    assert patch["applyTo"] == "NETWORK_FILTER"
    match = patch["match"]
    assert match["context"] == "SIDECAR_OUTBOUND"
    assert match["listener"]["portNumber"] == REDIS_PORT
    assert match["listener"]["filterChain"]["filter"]["name"] == "envoy.filters.network.tcp_proxy"
    assert patch["patch"]["operation"] == "INSERT_BEFORE"
    value = patch["patch"]["value"]
    assert value["name"] == "envoy.filters.network.wasm"
    cfg = value["typed_config"]["config"]
    assert cfg["fail_open"] is True and "failure_policy" not in cfg
    assert cfg["root_id"] == _only("WasmPlugin")["spec"]["pluginName"]
    assert cfg["vm_config"]["code"]["local"]["filename"].startswith("/")


def test_envoyfilter_and_wasmplugin_configure_the_filter_alike():
    cfg = _envoyfilter_patch()["patch"]["value"]["typed_config"]["config"]["configuration"]
    assert cfg["@type"] == "type.googleapis.com/google.protobuf.StringValue"
    assert json.loads(cfg["value"]) == _only("WasmPlugin")["spec"]["pluginConfig"]


def test_destinationrule_keepalive_complements_the_filter():
    spec = _only("DestinationRule", DR_FILE)["spec"]
    tcp = spec["trafficPolicy"]["connectionPool"]["tcp"]
    ka = tcp["tcpKeepalive"]
    assert {"time", "interval", "probes"} <= set(ka)
    time_s, interval_s = go_duration_seconds(ka["time"]), go_duration_seconds(ka["interval"])
    assert 1 <= ka["probes"] <= 9 and interval_s > 0
    # Kernel probes are the fallback while the filter keeps the connection busy: they start only
    # after an idle spell longer than the filter's longest keepalive interval, and the whole
    # kernel detection fits inside the shortest common NAT cutoff (Azure LB, 4 min).
    plugin = _only("WasmPlugin")["spec"]["pluginConfig"]
    longest = plugin.get("max_keepalive_interval") or plugin.get("keepalive_interval")
    if longest == "auto":
        longest = DEFAULT_MAX_KEEPALIVE_INTERVAL  # "auto" never keeps alive less often
    assert time_s > go_duration_seconds(longest)
    assert time_s < 240
    idle = go_duration_seconds(tcp.get("idleTimeout", "1h"))
    assert idle == 0 or idle > go_duration_seconds(longest), "keepalives must reset idleTimeout"


def test_destinationrule_tls_originates_tls_and_keeps_the_pool_settings():
    """destinationrule-tls.yaml replaces destinationrule.yaml for a TLS Redis (Istio keeps one
    top-level trafficPolicy per host): same host and connectionPool, plus tls SIMPLE with the
    SNI and certificate name set (a TCP route has no Host header to take them from)."""
    plain = _only("DestinationRule", DR_FILE)["spec"]
    tls_dr = _only("DestinationRule", DR_TLS_FILE)["spec"]
    assert tls_dr["host"] == plain["host"]
    assert tls_dr["trafficPolicy"]["connectionPool"] == plain["trafficPolicy"]["connectionPool"]
    tls = tls_dr["trafficPolicy"]["tls"]
    assert tls["mode"] == "SIMPLE"
    assert tls["sni"] and tls["sni"] in tls["subjectAltNames"]
    assert not tls.get("insecureSkipVerify"), "the server certificate must be checked"
    assert "clientCertificate" not in tls and "privateKey" not in tls  # those are MUTUAL's
    assert bool(tls.get("caCertificates")) != bool(tls.get("credentialName")), tls


# -- a Redis outside the mesh (serviceentry.yaml) ---------------------------------------------

def test_serviceentry_claims_the_redis_addresses_for_the_filter():
    """What makes istiod build a filtered chain for a Redis outside the mesh: a TCP port that
    the WasmPlugin matches, resolution NONE (ORIGINAL_DST: a connection keeps the address it
    asked for, so redirects to node IPs stay covered), CIDR addresses (only that range is
    claimed), exported to the application's namespace only."""
    se = _only("ServiceEntry")
    spec = se["spec"]
    plugin = _only("WasmPlugin")
    matched = {p["number"] for m in plugin["spec"]["match"] for p in m["ports"]}
    (port,) = spec["ports"]
    assert port["number"] in matched and port["protocol"] == "TCP", port
    assert spec["location"] == "MESH_EXTERNAL" and spec["resolution"] == "NONE"
    assert spec["addresses"] and all(ipaddress.ip_network(a) for a in spec["addresses"])
    assert "endpoints" not in spec and "workloadSelector" not in spec
    assert spec["exportTo"] == ["."]
    assert se["metadata"]["namespace"] == plugin["metadata"]["namespace"]


def _commented_yaml(file: str, kind: str) -> Dict[str, Any]:
    """The example document of `kind` written in the comments of envoy/istio/<file>: the run of
    '#   ' lines around '#   kind: <kind>', without that prefix."""
    lines = (ISTIO_DIR / file).read_text().splitlines()
    at = lines.index(f"#   kind: {kind}")
    start = at
    while start > 0 and lines[start - 1].startswith("#   "):
        start -= 1
    end = at
    while end < len(lines) and lines[end].startswith("#   "):
        end += 1
    return yaml.safe_load("\n".join(ln[4:] for ln in lines[start:end]))


def test_serviceentry_sidecar_example_validates_and_keeps_the_entry():
    """The Sidecar shown in serviceentry.yaml is valid and keeps the ServiceEntry in scope."""
    sidecar = _commented_yaml("serviceentry.yaml", "Sidecar")
    errors = _schema_errors(sidecar)
    assert not errors, "\n  ".join(errors)
    se = _only("ServiceEntry")
    hosts = [h for egress in sidecar["spec"]["egress"] for h in egress["hosts"]]
    assert sidecar["metadata"]["namespace"] == se["metadata"]["namespace"]
    assert "./*" in hosts and f"./{se['spec']['hosts'][0]}" in hosts, hosts


def test_serviceentry_schema_check_catches_mistakes():
    """Negative control: what the API server would refuse in a ServiceEntry."""
    se = copy.deepcopy(_only("ServiceEntry"))
    se["spec"]["resolution"] = "DNS"  # CIDR addresses need NONE or STATIC
    se["spec"]["location"] = "EXTERNAL"
    se["spec"]["ports"].append(dict(se["spec"]["ports"][0], name="tcp-redis-2"))
    errors = "\n".join(_schema_errors(se))
    assert "CIDR addresses are allowed only for NONE/STATIC" in errors, errors
    assert "'EXTERNAL' is not one of" in errors, errors
    assert "port number cannot be duplicated" in errors, errors


# -- envoy --mode validate -------------------------------------------------------------------

def _envoy_validate(config: Dict[str, Any], tmp_path: Path, name: str) -> Tuple[int, str]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config, indent=2))
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path),
                           "--disable-hot-restart"],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def _bootstrap_with(network_filter: Dict[str, Any]) -> Dict[str, Any]:
    """A sidecar-like outbound listener on the Redis port: [filter] -> tcp_proxy -> cluster."""
    cluster = "outbound|6379||redis.default.svc.cluster.local"
    return {
        "node": {"id": "sidecar~10.0.0.1~app.default~default.svc.cluster.local",
                 "cluster": "app.default"},
        "static_resources": {
            "listeners": [{
                "name": "0.0.0.0_6379",
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": REDIS_PORT}},
                "traffic_direction": "OUTBOUND",
                "filter_chains": [{"filters": [network_filter, {
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "tcp_proxy.v3.TcpProxy",
                        "stat_prefix": cluster, "cluster": cluster, "idle_timeout": "3600s"},
                }]}],
            }],
            "clusters": [{
                "name": cluster, "type": "STRICT_DNS", "connect_timeout": "10s",
                "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        "address": "redis.default.svc.cluster.local",
                        "port_value": REDIS_PORT}}}}]}]},
            }],
        },
    }


# What istiod makes of the WasmPlugin, by release (istio/istio pilot/pkg/model/extensions.go at
# each tag; 1.30: pilot/pkg/config/kube/extensions/translate.go first turns a WasmPlugin into a
# TrafficExtension named <name>~istio-translated-wasmplugin): (release, ECDS filter name prefix,
# plugin name suffix, how failStrategy FAIL_OPEN is written). 1.25-1.28 write `failure_policy`
# only for proxies >= 1.25 and the legacy `fail_open: true` for older ones; 1.20-1.24 always
# `fail_open`; 1.29 and later always `failure_policy`.
ISTIOD_RELEASES = [
    ("1.20", "", "", "fail_open"),
    ("1.21-1.24", "extensions.istio.io/wasmplugin/", "", "fail_open"),
    ("1.25-1.28, proxy < 1.25", "extensions.istio.io/wasmplugin/", "", "fail_open"),
    ("1.25-1.28, proxy >= 1.25", "extensions.istio.io/wasmplugin/", "", "failure_policy"),
    ("1.29", "extensions.istio.io/wasmplugin/", "", "failure_policy"),
    ("1.30", "extensions.istio.io/trafficextension/", "~istio-translated-wasmplugin",
     "failure_policy"),
]


def _wasmplugin_as_istiod_builds_it(wasm: Path, plugin_config_json: str,
                                    release=ISTIOD_RELEASES[-1]) -> Dict[str, Any]:
    """The network filter istiod sends (by ECDS) for our WasmPlugin, after istio-agent has swapped
    the oci:// source for the pulled file (istio/istio pilot/pkg/model/extensions.go,
    buildWasmConfig: name = namespace.name, root_id = pluginName, pluginConfig as JSON in a
    StringValue, FAIL_OPEN as `release` writes it, runtime v8)."""
    doc = _only("WasmPlugin")
    _, prefix, suffix, fail_field = release
    plugin_name = f"{doc['metadata']['namespace']}.{doc['metadata']['name']}{suffix}"
    assert doc["spec"]["failStrategy"] == "FAIL_OPEN"
    fail = {"fail_open": True} if fail_field == "fail_open" else {"failure_policy": "FAIL_OPEN"}
    return {
        "name": prefix + plugin_name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": {
                "name": plugin_name,
                "root_id": doc["spec"]["pluginName"],
                **fail,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin_config_json,
                },
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    # istio-agent strips its own ISTIO_META_WASM_* variables (pkg/wasm/convert.go).
                    "code": {"local": {"filename": str(wasm.resolve())}},
                },
            },
        },
    }


def _istio_json(struct: Dict[str, Any]) -> str:
    # protomarshal.ToJSON of a google.protobuf.Struct: plain compact JSON.
    return json.dumps(struct, separators=(",", ":"))


@pytest.mark.parametrize("release", ISTIOD_RELEASES, ids=[r[0] for r in ISTIOD_RELEASES])
def test_wasmplugin_config_loads_in_envoy(wasm, tmp_path, release):
    """The WasmPlugin's pluginConfig, as each istiod release delivers it, passes the module's
    configure step."""
    plugin_config = _istio_json(_only("WasmPlugin")["spec"]["pluginConfig"])
    filt = _wasmplugin_as_istiod_builds_it(wasm, plugin_config, release)
    rc, out = _envoy_validate(_bootstrap_with(filt), tmp_path, "wasmplugin")
    assert rc == 0, f"pluginConfig {plugin_config} rejected:\n{out[-3000:]}"


def test_envoy_refuses_both_failure_fields(wasm, tmp_path):
    """Why istiod writes one field or the other: Envoy rejects a plugin that sets both
    (source/extensions/common/wasm/wasm.cc, PluginConfig)."""
    plugin_config = _istio_json(_only("WasmPlugin")["spec"]["pluginConfig"])
    filt = _wasmplugin_as_istiod_builds_it(wasm, plugin_config)
    filt["typed_config"]["config"]["fail_open"] = True
    rc, out = _envoy_validate(_bootstrap_with(filt), tmp_path, "wasmplugin-both")
    assert rc != 0 and "only one of fail_open or failure_policy" in out, out[-3000:]


def test_validate_run_would_catch_a_bad_plugin_config(wasm, tmp_path):
    """Negative control: the same bootstrap with an unknown field fails, naming the field, so the
    test above really ran the module's configure step."""
    bad = dict(_only("WasmPlugin")["spec"]["pluginConfig"], keepalive_intervall="30s")
    bootstrap = _bootstrap_with(_wasmplugin_as_istiod_builds_it(wasm, _istio_json(bad)))
    rc, out = _envoy_validate(bootstrap, tmp_path, "wasmplugin-bad")
    assert rc != 0 and "keepalive_intervall" in out, out[-3000:]


def test_envoyfilter_patch_is_a_valid_envoy_network_filter(wasm, tmp_path):
    """The EnvoyFilter's patch value, inserted before tcp_proxy, with the module path pointed at
    the built module."""
    value = copy.deepcopy(_envoyfilter_patch()["patch"]["value"])
    value["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(wasm.resolve())
    rc, out = _envoy_validate(_bootstrap_with(value), tmp_path, "envoyfilter")
    assert rc == 0, out[-3000:]


# -- the native build's manifests (envoy/istio/native/) ------------------------------------------

NATIVE_DIR = ISTIO_DIR / "native"


def _native_doc(file: str) -> Dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((NATIVE_DIR / file).read_text()) if d is not None]
    assert len(docs) == 1, f"{file}: expected one document"
    return docs[0]


def test_native_envoyfilter_matches_istio_crd_schema():
    doc = _native_doc("envoyfilter.yaml")
    assert doc["kind"] == "EnvoyFilter"
    errors = _schema_errors(doc)
    assert not errors, "\n  ".join(errors)


def test_native_envoyfilter_fields_and_config_match_the_wasm_ones():
    """The same place as the Wasm EnvoyFilter (before tcp_proxy on outbound 6379), the same
    plugin configuration as the WasmPlugin, and the .so at the path the bootstrap uses."""
    (native,) = _native_doc("envoyfilter.yaml")["spec"]["configPatches"]
    wasm = _envoyfilter_patch()
    assert native["applyTo"] == wasm["applyTo"] and native["match"] == wasm["match"]
    assert native["patch"]["operation"] == "INSERT_BEFORE"
    value = native["patch"]["value"]
    assert value["name"] == "envoy.filters.network.dynamic_modules"
    cfg = value["typed_config"]
    assert cfg["filter_name"] == "redis_idle_guard"
    assert json.loads(cfg["filter_config"]["value"]) == _only("WasmPlugin")["spec"]["pluginConfig"]
    bootstrap = json.loads(_native_doc("bootstrap.yaml")["data"]["custom_bootstrap.json"])
    (ext,) = bootstrap["bootstrap_extensions"]
    assert ext["typed_config"]["dynamic_module_config"] == cfg["dynamic_module_config"]
    assert ext["typed_config"]["extension_name"] == "redis_idle_guard"


def test_native_envoyfilter_and_bootstrap_load_in_envoy(native_module, tmp_path):
    """The patch value before tcp_proxy and the bootstrap override merged in, with the module
    path pointed at the built .so: `envoy --mode validate` runs the module's config_new."""
    value = copy.deepcopy(_native_doc("envoyfilter.yaml")["spec"]["configPatches"][0]["patch"]["value"])
    so = str(native_module.path.resolve())
    value["typed_config"]["dynamic_module_config"]["module"]["local"]["filename"] = so
    config = _bootstrap_with(value)
    override = json.loads(_native_doc("bootstrap.yaml")["data"]["custom_bootstrap.json"])
    for ext in override["bootstrap_extensions"]:
        ext["typed_config"]["dynamic_module_config"]["module"]["local"]["filename"] = so
    config.update(override)
    rc, out = _envoy_validate(config, tmp_path, "native-envoyfilter")
    assert rc == 0, out[-3000:]
    assert "redis-idle-guard: configured" in out, out[-3000:]


ENVOY_CONFIGS = sorted(p.relative_to(REPO_ROOT).as_posix()
                       for p in (REPO_ROOT / "envoy").glob("*.yaml"))


@pytest.mark.parametrize("config", ENVOY_CONFIGS)
def test_envoy_config_validates(wasm, native_module, config):
    """`envoy --mode validate -c envoy/<file>.yaml`, from the repository root (their paths are
    relative to it), for every Envoy config the project ships."""
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", config,
                           "--disable-hot-restart"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


# -- the OCI image ---------------------------------------------------------------------------

OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _dockerfile() -> Tuple[str, str, str]:
    """(FROM image, COPY source, COPY destination) of envoy/istio/Dockerfile."""
    lines = [ln.strip() for ln in (ISTIO_DIR / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    instructions = [ln.split(None, 1) for ln in lines]
    assert [i[0].upper() for i in instructions] == ["FROM", "COPY"], lines
    src, dest = instructions[1][1].split()
    return instructions[0][1], src, dest


def test_dockerfile_packages_plugin_wasm_from_scratch(wasm):
    base, src, dest = _dockerfile()
    assert base == "scratch"
    assert (REPO_ROOT / src).resolve() == wasm.resolve(), f"COPY source {src} is not the module"
    assert dest.lstrip("./") == "plugin.wasm" and not dest.endswith("/"), dest


def test_dockerfile_instructions_build_one_manifest():
    """The documented build makes a single linux/amd64 image manifest, whose digest is the one
    istio-agent checks (an index digest never matches, see the Dockerfile)."""
    text = (ISTIO_DIR / "Dockerfile").read_text()
    build = text[text.index("docker buildx build"):].split("--push")[0]
    for flag in ("-f envoy/istio/Dockerfile", "--platform linux/amd64", "--provenance=false",
                 "--sbom=false"):
        assert flag in build, f"{flag} missing from the documented build: {build}"


def _dockerignore() -> List[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _go_match(pattern: str, path: str) -> bool:
    """Go's filepath.Match, as Docker applies it to .dockerignore patterns, plus `**`."""
    rx, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            rx, i = rx + ".*", i + 2
            continue
        c = pattern[i]
        if c == "[":
            end = pattern.index("]", i)
            rx, i = rx + pattern[i:end + 1].replace("[!", "[^"), end + 1
            continue
        rx += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.fullmatch(rx, path) is not None


def docker_ignored(path: str, patterns: List[str]) -> bool:
    """Whether `docker build` leaves `path` (relative to the context) out of the context: the
    last pattern that matches the path or one of its parent directories decides, `!` keeps
    (moby patternmatcher, MatchesOrParentMatches)."""
    ignored, parts = False, path.split("/")
    for pattern in patterns:
        keep = pattern.startswith("!")
        pattern = posixpath.normpath(pattern.lstrip("!")).lstrip("/")
        if any(_go_match(pattern, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not keep
    return ignored


def test_dockerignore_sends_only_the_module(wasm):
    """The build context (the repository root) is the module alone: the COPY source exists after
    `make build` and is sent; every other file is not (.venv and target/ alone are gigabytes)."""
    patterns = _dockerignore()
    _, src, _ = _dockerfile()
    assert (REPO_ROOT / src).is_file(), f"{src} does not exist: run `make build`"
    assert not docker_ignored(src, patterns)
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    others = listed.stdout.split() + [
        ".venv/bin/python", ".git/HEAD", ".lab/run-1/envoy.log",
        "target/release/libredis_idle_guard.so",
        "target/wasm32-unknown-unknown/release/deps/redis_idle_guard.wasm"]
    assert len(others) > 20
    sent = [p for p in others if p != src and not docker_ignored(p, patterns)]
    assert sent == [], f"sent to the Docker daemon besides the module: {sent[:20]}"
    # The matcher itself: without the file everything is sent; a directory pattern covers its files.
    assert not docker_ignored("README.md", []) and docker_ignored("a/b/c", ["a"])


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _oci_image_layout(module: bytes, dest: str, root: Path) -> None:
    """What `docker build` makes of the Dockerfile (one layer, the module at `dest`), written
    as an OCI image layout (the format `skopeo copy oci:<dir> docker://…` pushes)."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(dest.lstrip("./"))
        info.size, info.mode = len(module), 0o644
        tar.addfile(info, io.BytesIO(module))
    layer = gzip.compress(tar_bytes.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",  # not read by istio-agent
                         "rootfs": {"type": "layers",
                                    "diff_ids": [_sha(tar_bytes.getvalue())]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _sha(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": _sha(layer), "size": len(layer)}],
    }).encode()
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in (layer, config, manifest):
        (blobs / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": _sha(manifest), "size": len(manifest)}]}))


def _extract_like_istio_agent(root: Path) -> Optional[bytes]:
    """istio/istio pkg/wasm/imagefetcher.go for an OCI manifest (extractOCIStandardImage): the
    LAST layer must be application/vnd.oci.image.layer.v1.tar+gzip; the first tar entry whose
    base name is plugin.wasm is the module."""
    def blob(digest: str) -> bytes:
        data = (root / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
        assert _sha(data) == digest
        return data
    index = json.loads((root / "index.json").read_text())
    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    last = manifest["layers"][-1]
    if last["mediaType"] != OCI_LAYER_GZIP:
        return None
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(last["digest"])))) as tar:
        for member in tar:
            if Path(member.name).name == "plugin.wasm":
                return tar.extractfile(member).read()
    return None


def test_image_layout_gives_istio_agent_the_module(wasm, tmp_path):
    _, _, dest = _dockerfile()
    module = wasm.read_bytes()
    assert module[:4] == b"\0asm"
    _oci_image_layout(module, dest, tmp_path / "image")
    assert _extract_like_istio_agent(tmp_path / "image") == module


# -- the README's snippets -------------------------------------------------------------------

def _readme_yaml(first_line: str) -> Dict[str, Any]:
    """The README's ```yaml block that starts with `first_line`."""
    text = (REPO_ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M)
              if b.startswith(first_line)]
    assert len(blocks) == 1, f"README: expected one yaml block starting {first_line!r}"
    return yaml.safe_load(blocks[0])


def test_readme_envoy_snippet_loads_in_envoy(wasm, tmp_path):
    """The filter chain a reader pastes from the README, with the module where they put it."""
    (chain,) = _readme_yaml("filter_chains:")["filter_chains"]
    guard, proxy = chain["filters"]
    assert proxy["name"] == "envoy.filters.network.tcp_proxy"
    guard["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(wasm)
    rc, out = _envoy_validate(_bootstrap_with(guard), tmp_path, "readme")
    assert rc == 0, out[-2000:]


def test_readme_wasmplugin_snippet_matches_istio_crd_schema():
    doc = _readme_yaml("apiVersion: extensions.istio.io")
    doc["spec"]["url"] = doc["spec"]["url"].replace("<digest>", "0" * 64)
    assert _schema_errors(doc) == []
    shipped = _only("WasmPlugin")["spec"]
    for field in ("pluginName", "type", "match", "failStrategy"):
        assert doc["spec"][field] == shipped[field], field
