"""TLS to Redis: the filter works when Envoy originates TLS, and passes the connection through
when the application encrypts end to end.

1. TLS origination (what Istio does for a DestinationRule with `tls.mode: SIMPLE`, and what
   envoy/tls.yaml does): the application speaks plain RESP to Envoy, Envoy's cluster speaks TLS
   to a TLS-only Redis (`port 0`, `tls-port`, a CA and certificate made by openssl for the
   test). Through the fault lab, NAT silent drop (a) and Redis `timeout` (c), one round each:
   the first command after the idle spell fails through plain Envoy (with TLS origination) and
   succeeds through the filter. Client: redis.asyncio RESP3 pool, retries off. Filter at
   keepalive 1s / ping_timeout 2s, below the faults' 2 s cutoffs. Needs root (namespaces).
2. TLS end to end (rediss:// through the filter, Envoy plain tcp_proxy): the filter sees a TLS
   record where a command should begin and passes the connection through. Every byte passes
   unchanged: TLS itself rejects a single altered byte, and Envoy's byte counters match on
   both sides.
3. The shipped envoy/tls.yaml runs (ports, address, module and CA moved for the lab; that it
   validates as shipped is checked with every envoy/*.yaml in test_manifests.py), and
   certificate checks are on: a certificate for another name is refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from typing import Dict, Tuple

import pytest
import yaml

from lab import EnvoyProxy, RawConnection, RedisServer, make_async_client
from lab.envoy_proxy import UpstreamTls
from lab.faults import Fault, NatTimeout, RedisTimeout
from lab.matrix import ClientSpec, Outcome, Settings, one_round
from lab.procs import REPO_ROOT, wait_until
from lab.resp import EOFReached

needs_root = pytest.mark.needs_root

S = Settings(rounds=1)
GUARD = {"keepalive_interval": S.keepalive, "ping_timeout": S.ping_timeout}
RESP3 = ClientSpec("resp3", "redis.asyncio RESP3 pool", "py-async", 3)
SHIPPED_TLS_YAML = "envoy/tls.yaml"


def origination(redis: RedisServer) -> UpstreamTls:
    """Envoy trusts this Redis's CA and expects its certificate name."""
    return UpstreamTls(redis.ca_path, redis.server_name)


def ssl_stats(envoy: EnvoyProxy) -> Dict[str, int]:
    """The Redis cluster's TLS counters (handshake, fail_verify_san, ...), by short name."""
    prefix = "cluster.redis.ssl."
    return {k[len(prefix):]: v for k, v in envoy.stats(r"^cluster\.redis\.ssl\.").items()
            if k.startswith(prefix) and isinstance(v, int)}


# -- 1. TLS origination under idle-connection faults ------------------------------------------

def _origination_round(lab, module, fault: Fault) -> Tuple[Dict[str, Outcome], EnvoyProxy]:
    """One round through plain Envoy and through the filter at once, both originating TLS."""
    tls = origination(fault.redis)
    envoys = {"plain": lab.envoy(fault.address, name="envoy-plain-tls", upstream_tls=tls),
              "guard": lab.envoy(fault.address, module=module, plugin_config=GUARD,
                                 name="envoy-guard-tls", upstream_tls=tls)}
    sessions = [(envoys[chain].address, RESP3, f"tls:{fault.key}:{chain}") for chain in envoys]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = asyncio.run(one_round(fault, sessions, S, pool))
    result = dict(zip(envoys, outcomes))
    for chain, o in result.items():
        # One line per cell, for the measurements in the README (grep "TLS-CELL").
        print(f"TLS-CELL ({fault.key}) {module.kind} {chain}: errors={0 if o.ok else 1}/1 "
              f"latency={o.latency_ms} ms error={o.error!r}")
        assert o.harness_error is None, f"{chain}: {o.harness_error}"
    for chain, envoy in envoys.items():
        assert ssl_stats(envoy).get("handshake", 0) >= 1, f"{chain}: no TLS towards Redis"
    print("filter stats:", envoys["guard"].guard_stats())
    return result, envoys["guard"]


def _assert_ok(o: Outcome, what: str) -> None:
    assert o.ok, f"{what}: {o.error}"
    assert o.verified, f"{what}: GET after the command did not read it back"


@needs_root
def test_origination_nat_silent_drop(lab, module):
    with NatTimeout("drop", cutoff_s=2, tls=True) as fault:
        r, guard = _origination_round(lab, module, fault)
    plain = r["plain"]
    assert not plain.ok and plain.error.startswith("TimeoutError"), plain  # hung until timeout
    _assert_ok(r["guard"], "through the filter")
    stats = guard.guard_stats()
    assert stats["keepalive.answered"] >= 3 and stats["keepalive.failed"] == 0, stats
    assert stats.get("passthrough", 0) == 0, stats  # the filter saw RESP, not ciphertext


@needs_root
def test_origination_redis_timeout(lab, module):
    with RedisTimeout(cutoff_s=2, tls=True) as fault:
        r, guard = _origination_round(lab, module, fault)
    plain = r["plain"]
    assert not plain.ok and "Connection closed by server." in plain.error, plain
    _assert_ok(r["guard"], "through the filter")
    stats = guard.guard_stats()
    assert stats["keepalive.answered"] >= 3 and stats.get("passthrough", 0) == 0, stats


# -- 2. TLS end to end: the filter passes it through -----------------------------------------

IDLE_S = 2.5  # above the filter's keepalive_interval: a PING it sent would break the session


def _byte_counters(envoy: EnvoyProxy) -> Tuple[int, int, int, int]:
    """(client → Envoy, Envoy → Redis, Redis → Envoy, Envoy → client) bytes, as counted on
    the sockets (tcp_proxy binds its downstream connection's counters to tcp.redis.*)."""
    s = envoy.stats(r"^(tcp\.redis|cluster\.redis)\.(downstream|upstream)_cx_(rx|tx)_bytes_total$")
    return (s["tcp.redis.downstream_cx_rx_bytes_total"],
            s["cluster.redis.upstream_cx_tx_bytes_total"],
            s["cluster.redis.upstream_cx_rx_bytes_total"],
            s["tcp.redis.downstream_cx_tx_bytes_total"])


async def _rediss_session(address: Tuple[str, int], redis: RedisServer) -> None:
    client = make_async_client(address, ssl=True, ssl_ca_certs=str(redis.ca_path))
    try:
        big = os.urandom(256 * 1024)
        assert await client.set("tls:big", big) is True
        assert await client.get("tls:big") == big
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(100):
                pipe.incr("tls:n")
            assert (await pipe.execute())[-1] == 100
        await asyncio.sleep(IDLE_S)
        assert await client.set("tls:after-idle", "yes") is True
        assert await client.get("tls:after-idle") == b"yes"
    finally:
        await client.aclose()


def test_tls_end_to_end_passes_through_untouched(lab, module):
    redis = lab.redis(tls=True)
    envoy = lab.envoy(redis, module=module,
                      plugin_config={"keepalive_interval": "1s", "ping_timeout": "1s"})
    asyncio.run(_rediss_session(envoy.address, redis))
    envoy.wait_for_guard_stat("connections", lambda v: v == 0)
    counts = wait_until(lambda: (c := _byte_counters(envoy))[0] == c[1] and c[2] == c[3] and c,
                        5, 0.1, "byte counters on both sides")
    print("bytes client→Redis, Redis→client:", counts[:2], counts[2:])
    assert counts[0] > 256 * 1024 and counts[2] > 256 * 1024, counts
    stats = envoy.guard_stats()
    print("filter stats:", stats)
    assert stats.get("passthrough", 0) >= 1, stats
    assert stats.get("keepalive.sent", 0) == 0, stats  # nothing injected into the TLS stream
    assert stats.get("passthrough.tls", 0) >= 1, stats
    lines = [ln for ln in envoy.log_text().splitlines() if "passing through" in ln]
    assert lines and all("TLS" in ln for ln in lines), lines


def test_tls_passthrough_close_is_not_an_idle_death(lab, module):
    """A client that ends its TLS session sends close_notify, so Redis closes first: the filter,
    which passed it through and cannot know if the client was idle, must not count that as a link
    that died idle (idle_deaths feeds the learning) nor as a reconnect signal."""
    redis = lab.redis(tls=True)
    envoy = lab.envoy(redis, module=module, plugin_config={"keepalive_interval": "1s"})

    async def session() -> None:
        client = make_async_client(envoy.address, ssl=True, ssl_ca_certs=str(redis.ca_path))
        try:
            assert await client.set("tls:close", "yes") is True
        finally:
            await client.aclose()

    asyncio.run(session())
    envoy.wait_for_guard_stat("connections", lambda v: v == 0)
    stats, upstream = envoy.guard_stats(), envoy.upstream_stats()
    print("filter stats:", stats, upstream)
    assert stats["passthrough.tls"] == 1, stats
    assert stats["reconnect_signals"] == 0 and upstream.get("idle_deaths", 0) == 0, upstream


# -- 3. The shipped envoy/tls.yaml -------------------------------------------------------------

class ShippedEnvoy(EnvoyProxy):
    """An EnvoyProxy that runs a given bootstrap instead of generating one."""

    def __init__(self, upstream, config: dict, **kwargs):
        super().__init__(upstream, **kwargs)
        self.config = config

    def bootstrap(self) -> dict:
        return self.config


def _shipped_tls() -> dict:
    return yaml.safe_load((REPO_ROOT / SHIPPED_TLS_YAML).read_text())


def _shipped_sni() -> str:
    (cluster,) = _shipped_tls()["static_resources"]["clusters"]
    return cluster["transport_socket"]["typed_config"]["sni"]


def _shipped_tls_for_lab(redis: RedisServer, module) -> dict:
    """envoy/tls.yaml with only what a lab run must change: ports (0, read back), the Redis
    endpoint (the lab's), the module path (absolute) and the CA file (the lab Redis's)."""
    cfg = _shipped_tls()
    cfg["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    (listener,) = cfg["static_resources"]["listeners"]
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    wasm, _tcp = listener["filter_chains"][0]["filters"]
    wasm["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(
        module.path.resolve())
    (cluster,) = cfg["static_resources"]["clusters"]
    (ep,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ep["endpoint"]["address"]["socket_address"].update(address=redis.host, port_value=redis.port)
    tls = cluster["transport_socket"]["typed_config"]
    validation = tls["common_tls_context"]["validation_context"]
    validation["trusted_ca"]["filename"] = str(redis.ca_path)
    (san,) = validation["match_typed_subject_alt_names"]
    assert san["matcher"]["exact"] == tls["sni"], "the shipped file checks the name it sends"
    return cfg


def test_shipped_tls_yaml_runs(lab, wasm_module):
    """Plain RESP in, TLS to a Redis whose certificate carries the shipped name, the filter on
    the plain side."""
    redis = lab.redis(tls=True, server_name=_shipped_sni())
    envoy = ShippedEnvoy(redis, _shipped_tls_for_lab(redis, wasm_module), module=wasm_module,
                         name="envoy-shipped-tls")
    lab.envoys.append(envoy)
    with envoy:
        with RawConnection(envoy.address) as c:
            assert c.command("SET", "shipped-tls", "yes").raw == b"+OK\r\n"
            assert c.command("GET", "shipped-tls").raw == b"$3\r\nyes\r\n"
            assert envoy.guard_stat("connections") == 1
        assert ssl_stats(envoy)["handshake"] >= 1
        assert envoy.guard_stat("passthrough", 0) == 0


def test_origination_refuses_a_certificate_for_another_name(lab):
    """A negative control: the CA is right, the name is not, so Envoy refuses the handshake
    (TLS origination checks who Redis is, not only that the link is encrypted)."""
    redis = lab.redis(tls=True)
    envoy = lab.envoy(redis, upstream_tls=UpstreamTls(redis.ca_path, "not-" + redis.server_name))
    with RawConnection(envoy.address) as c:
        with pytest.raises((EOFReached, OSError)):
            c.command("PING", timeout=5)
    assert ssl_stats(envoy).get("fail_verify_san", 0) >= 1, ssl_stats(envoy)
