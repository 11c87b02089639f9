"""(o) A Redis outside the mesh, reached by original destination (envoy/original-dst.yaml): the
filter is on the flows a ServiceEntry claims and on nothing else, with a real iptables redirect.

This is how an Istio sidecar carries traffic to ElastiCache, Memorystore, Azure Cache or a Redis
behind a NAT: the application connects to the Redis address itself; iptables nat OUTPUT
redirects the connection to Envoy's virtualOutbound listener, which hands it by original
destination to the service-port listener (the chain a `resolution: NONE` ServiceEntry with
`addresses` makes: filter + tcp_proxy → ORIGINAL_DST cluster) or, for an address nobody claims,
keeps it on its catch-all chain (tcp_proxy → PassthroughCluster, no filter): the incident's case.

Each test builds two fault-lab paths of the same fault: one claimed (its /29 is the
ServiceEntry's address range), one unclaimed. ONE Envoy runs the shipped file, patched only in
ports, the claimed range, the module (either build) and a 1 s keepalive. The redirect rules live
in the root network namespace, match only the two lab Redis addresses, skip Envoy's own upstream
sockets by their SO_MARK (as the file documents), and are removed on exit (and, if a run was
killed, by the next one). A redis.asyncio RESP3 pool, retries off, does warm-up, idle 4 s, SET on
each path at once: the fault must bite the unclaimed path and not the claimed one, and Envoy's
and the filter's stats must show which chain each flow took. Needs root. About 10 s per test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import os
import re
import shlex
import subprocess
from typing import Any, Dict, List, Mapping, Optional, Tuple

import pytest
import yaml

from lab import EnvoyProxy, FilterModule
from lab.faults import Fault, NatTimeout, RedisTimeout
from lab.matrix import ClientSpec, Outcome, Settings, one_round
from lab.procs import LAB_NETWORK, LOOPBACK, REPO_ROOT, LabError

pytestmark = pytest.mark.needs_root

SHIPPED = REPO_ROOT / "envoy" / "original-dst.yaml"
ENVOY_MARK = 1337                      # SO_MARK on Envoy's upstream sockets (0x539)
SERVICE_PORT = 6379                    # the port in the shipped file
SHIPPED_CLUSTER = "outbound|6379||redis.example.internal"
PASSTHROUGH = "PassthroughCluster"
RULE_TAG = f"rig-odst-{os.getpid()}"   # iptables comment: whose rule it is

S = Settings(rounds=1)
GUARD = {"keepalive_interval": S.keepalive, "ping_timeout": S.ping_timeout}
RESP3 = ClientSpec("resp3", "redis.asyncio RESP3 pool", "py-async", 3)


# -- the shipped file ------------------------------------------------------------------------

def _shipped() -> Dict[str, Any]:
    return yaml.safe_load(SHIPPED.read_text())


def _listener(cfg: Dict[str, Any], name: str) -> Dict[str, Any]:
    (found,) = [l for l in cfg["static_resources"]["listeners"] if l["name"] == name]
    return found


def _filter_names(chain: Mapping[str, Any]) -> List[str]:
    return [f["name"] for f in chain["filters"]]


def test_shipped_file_has_istios_shape():
    """The filter sits on the claimed chain only, before tcp_proxy; every other chain is
    tcp_proxy alone; both clusters go to the original destination from marked sockets."""
    cfg = _shipped()
    virtual = _listener(cfg, "virtualOutbound")
    assert virtual["use_original_dst"] is True
    assert [_filter_names(c) for c in virtual["filter_chains"]] == [
        ["envoy.filters.network.tcp_proxy"]]
    port = _listener(cfg, f"0.0.0.0_{SERVICE_PORT}")
    assert port["bind_to_port"] is False
    (claimed,) = port["filter_chains"]
    assert claimed["filter_chain_match"]["prefix_ranges"], "the ServiceEntry's addresses"
    assert _filter_names(claimed) == ["envoy.filters.network.wasm",
                                      "envoy.filters.network.tcp_proxy"]
    assert _filter_names(port["default_filter_chain"]) == ["envoy.filters.network.tcp_proxy"]
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    assert set(clusters) == {SHIPPED_CLUSTER, PASSTHROUGH}
    for c in clusters.values():
        assert c["type"] == "ORIGINAL_DST" and c["lb_policy"] == "CLUSTER_PROVIDED"
        (opt,) = c["upstream_bind_config"]["socket_options"]
        assert (opt["level"], opt["name"], opt["int_value"]) == (1, 36, ENVOY_MARK)


# -- Envoy running the shipped file ----------------------------------------------------------

def _range_of(fault: Fault) -> Tuple[str, int]:
    """The claimed path's /29 (its lab slot), as a ServiceEntry `addresses` CIDR would be."""
    net = ipaddress.ip_network(f"{fault.topology.redis_addr}/29", strict=False)
    assert net.subnet_of(LAB_NETWORK)
    return str(net.network_address), net.prefixlen


class OriginalDstEnvoy(EnvoyProxy):
    """envoy/original-dst.yaml as shipped, with only what a lab run must change: the ports (0
    and read back; the service-port listener on the claimed Redis's port), the claimed address
    range, the filter (`module`'s build with `plugin_config`, or none at all)."""

    def __init__(self, claimed: Fault, **kwargs):
        super().__init__(claimed.address, **kwargs)
        self.claimed_range = _range_of(claimed)
        self.claimed_cluster = SHIPPED_CLUSTER.replace(
            f"|{SERVICE_PORT}|", f"|{claimed.address[1]}|")

    def bootstrap(self) -> Dict[str, Any]:
        cfg = _shipped()
        cfg["admin"]["address"]["socket_address"].update(address=LOOPBACK, port_value=0)
        cfg["node"] = {"id": self.name, "cluster": "redis-idle-guard-lab"}
        cfg["stats_flush_interval"] = "1s"
        virtual = _listener(cfg, "virtualOutbound")
        virtual["address"]["socket_address"].update(address=LOOPBACK, port_value=0)
        port = _listener(cfg, f"0.0.0.0_{SERVICE_PORT}")
        redis_port = self.upstream[1]
        port["name"] = f"0.0.0.0_{redis_port}"
        port["address"]["socket_address"]["port_value"] = redis_port
        (claimed,) = port["filter_chains"]
        prefix, length = self.claimed_range
        claimed["filter_chain_match"]["prefix_ranges"] = [
            {"address_prefix": prefix, "prefix_len": length}]
        tcp = claimed["filters"][-1]["typed_config"]
        tcp["cluster"] = tcp["stat_prefix"] = self.claimed_cluster
        claimed["filters"] = ([self.module.filter_config(self.plugin_config)]
                              if self.module is not None else []) + claimed["filters"][-1:]
        for cluster in cfg["static_resources"]["clusters"]:
            if cluster["name"] == SHIPPED_CLUSTER:
                cluster["name"] = self.claimed_cluster
        if self.module is not None and self.module.bootstrap_extensions():
            cfg["bootstrap_extensions"] = self.module.bootstrap_extensions()
        # The YAML anchor made both clusters share one mapping: give each its own.
        return json.loads(json.dumps(cfg))

    def _listener_port(self) -> Optional[int]:
        status, body = self._admin_get("/listeners?format=json")
        if status != 200:
            return None
        for entry in json.loads(body).get("listener_statuses", []):
            if entry.get("name") == "virtualOutbound":
                port = entry["local_address"]["socket_address"].get("port_value")
                return int(port) if port else None
        return None

    def cluster_counter(self, cluster: str, name: str) -> int:
        full = f"cluster.{cluster}.{name}"
        return int(self.stats(f"^{re.escape(full)}$").get(full, 0))


# -- the redirect ----------------------------------------------------------------------------

def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["iptables", "-w", "-t", "nat", *args],
                          capture_output=True, text=True, timeout=10)
    if check and proc.returncode != 0:
        raise LabError(f"iptables {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def our_rules() -> List[str]:
    """This process's redirect rules in the root namespace's nat OUTPUT chain (`-S` form)."""
    return [ln for ln in _iptables("-S", "OUTPUT").stdout.splitlines() if RULE_TAG in ln]


def remove_stale_redirects() -> None:
    """Delete redirect rules left by a run that was killed before its cleanup: a rule that
    outlives its lab path would capture the next path that gets the same slot and port."""
    for line in _iptables("-S", "OUTPUT").stdout.splitlines():
        words = shlex.split(line)
        tag = next((w for w in words if w.startswith("rig-odst-")), None)
        if tag and not _pid_alive(int(tag.rsplit("-", 1)[1])) and words[:2] == ["-A", "OUTPUT"]:
            _iptables("-D", "OUTPUT", *words[2:], check=False)


class Redirect:
    """iptables nat OUTPUT: TCP to `address`, except from sockets marked ENVOY_MARK (Envoy's
    upstream connections), is REDIRECTed to 127.0.0.1:`to_port`. A context manager."""

    def __init__(self, address: Tuple[str, int], to_port: int):
        host, port = address
        if ipaddress.ip_address(host) not in LAB_NETWORK:
            raise LabError(f"redirects only lab addresses, not {host}")
        self.spec = ["-p", "tcp", "-d", f"{host}/32", "--dport", str(port),
                     "-m", "mark", "!", "--mark", hex(ENVOY_MARK),
                     "-m", "comment", "--comment", RULE_TAG,
                     "-j", "REDIRECT", "--to-ports", str(to_port)]
        self.installed = False

    def __enter__(self) -> "Redirect":
        _iptables("-I", "OUTPUT", "1", *self.spec)
        self.installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self.installed:
            _iptables("-D", "OUTPUT", *self.spec, check=False)
            self.installed = False


# -- one round -------------------------------------------------------------------------------

def _round(lab, module: FilterModule, unclaimed: Fault,
           claimed: Fault) -> Tuple[Dict[str, Outcome], Dict[str, Any]]:
    """Both paths at once through ONE Envoy, the clients connecting to the Redis addresses:
    ({"unclaimed"|"claimed": Outcome}, the filter's stats)."""
    remove_stale_redirects()
    envoy = OriginalDstEnvoy(claimed, module=module, plugin_config=GUARD, name="envoy-odst")
    lab.envoys.append(envoy)
    with envoy, Redirect(unclaimed.address, envoy.listener_port), \
            Redirect(claimed.address, envoy.listener_port):
        assert len(our_rules()) == 2, our_rules()
        sessions = [(unclaimed.address, RESP3, "odst:unclaimed"),
                    (claimed.address, RESP3, "odst:claimed")]
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = asyncio.run(one_round(claimed, sessions, S, pool))
        result = dict(zip(("unclaimed", "claimed"), outcomes))
        for path, o in result.items():
            print(f"{path:9} ok={o.ok} latency={o.latency_ms} ms error={o.error!r}")
            assert o.harness_error is None, f"{path}: {o.harness_error}"
        _assert_paths(envoy)
        stats = envoy.guard_stats()
    assert our_rules() == [], "redirect rules left behind"
    return result, stats


def _assert_paths(envoy: OriginalDstEnvoy) -> None:
    """Each flow went through Envoy (not around it) and on the chain its address selects."""
    through = {c: envoy.cluster_counter(c, "upstream_cx_total")
               for c in (PASSTHROUGH, envoy.claimed_cluster)}
    upstream = envoy.upstream_stats(envoy.claimed_cluster)
    print("upstream connections:", through, "\nfilter, claimed upstream:", upstream)
    assert through[PASSTHROUGH] >= 1 and through[envoy.claimed_cluster] >= 1, through
    # The filter saw only the claimed flow (a pool may open a second connection).
    assert 1 <= upstream.get("connections_opened", 0) <= through[envoy.claimed_cluster], upstream
    assert envoy.upstream_stats(PASSTHROUGH) == {}
    assert upstream.get("keepalive.sent", 0) >= 2, upstream


def _assert_ok(o: Outcome, what: str) -> None:
    assert o.ok, f"{what}: {o.error}"
    assert o.verified, f"{what}: GET after the command did not read it back"
    # Far below the clients' 2 s timeout (it did not wait on a dead link), with room for a
    # busy 2-core machine (as in test_fault_lab.py).
    limit_ms = S.command_timeout_s * 1000 * 0.75
    assert o.latency_ms < limit_ms, f"{what}: first command after idle took {o.latency_ms:.0f} ms"


def test_nat_drop_bites_the_unclaimed_path_only(lab, module):
    """A NAT that silently forgets idle flows after 2 s: the unclaimed flow hangs until the
    client's timeout; the claimed one is kept alive by the filter's PINGs."""
    with NatTimeout("drop", cutoff_s=2) as unclaimed, NatTimeout("drop", cutoff_s=2) as claimed:
        r, stats = _round(lab, module, unclaimed, claimed)
    plain = r["unclaimed"]
    assert not plain.ok and plain.error.startswith("TimeoutError"), plain
    _assert_ok(r["claimed"], "claimed path, through the filter")
    assert stats["keepalive.answered"] >= 3 and stats["keepalive.failed"] == 0, stats


def test_redis_timeout_bites_the_unclaimed_path_only(lab, module):
    """Redis `timeout 2`: the unclaimed connection is closed while idle and the pool's next
    command fails; the claimed one never goes idle long enough."""
    with RedisTimeout(cutoff_s=2) as unclaimed, RedisTimeout(cutoff_s=2) as claimed:
        r, _ = _round(lab, module, unclaimed, claimed)
    plain = r["unclaimed"]
    assert not plain.ok and "Connection closed by server." in plain.error, plain
    _assert_ok(r["claimed"], "claimed path, through the filter")
