"""Pooled mode: Envoy's redis_proxy in front, redis-idle-guard on every pooled upstream leg.

    app ──► 127.0.0.1:<port> [redis_proxy] ──► cluster "redis_via_guard"
              (endpoint: envoy_internal_address → internal listener "redis_guard_leg")
        ──► internal listener [redis-idle-guard? → tcp_proxy] ──► cluster "redis" ──► Redis

redis_proxy keeps one upstream connection per worker and Redis host, never expires it, answers
the client's PING itself and does not retry a command that died on a stale connection. A wasm
filter cannot be a cluster (upstream) filter, so each pooled connection is routed through an
Envoy internal listener, whose filter chain is the filter + tcp_proxy: the filter then sees
every pooled leg exactly as it sees a client connection in the transparent setup.

PooledEnvoy(upstream, module=None) is the same chain without the filter (redis_proxy → internal
listener → tcp_proxy → Redis); internal_leg=False is redis_proxy alone, straight to Redis (what
teams run today). envoy/pooled.yaml is the copy-ready version of the same bootstrap.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from .envoy_proxy import EnvoyProxy, tcp_proxy_config
from .module import FilterModule
from .procs import LOOPBACK, REPO_ROOT, LabError, ManagedProcess, unique_workdir

SHIPPED_POOLED_YAML = REPO_ROOT / "envoy" / "pooled.yaml"

POOLED_LISTENER = "redis_pooled"           # the app-facing listener, as in envoy/pooled.yaml
LEG_LISTENER = "redis_guard_leg"          # the internal listener: one connection per pooled leg
LEG_CLUSTER = "redis_via_guard"           # redis_proxy's cluster: endpoints are internal addresses
REDIS_CLUSTER = "redis"                   # the real Redis (tcp_proxy's cluster)
REDIS_PROXY_PREFIX = "redis"              # redis_proxy stat_prefix → redis.redis.*


def redis_proxy_filter(cluster: str, op_timeout: Union[int, float, str] = "5s",
                       settings: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """envoy.filters.network.redis_proxy with one catch-all route to `cluster`."""
    s: Dict[str, Any] = {"op_timeout": op_timeout if isinstance(op_timeout, str)
                         else f"{op_timeout:g}s"}
    s.update(settings or {})
    return {
        "name": "envoy.filters.network.redis_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy",
            "stat_prefix": REDIS_PROXY_PREFIX,
            "settings": s,
            "prefix_routes": {"catch_all_route": {"cluster": cluster}},
        },
    }


def internal_upstream_transport_socket() -> Dict[str, Any]:
    """The internal_upstream transport socket (it can pass metadata and filter state to the
    internal listener; Envoy 1.40 also works without it, measured) around raw_buffer."""
    return {
        "name": "envoy.transport_sockets.internal_upstream",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream"
                     ".v3.InternalUpstreamTransport",
            "transport_socket": {
                "name": "envoy.transport_sockets.raw_buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer"
                             ".v3.RawBuffer"},
            },
        },
    }


class PooledEnvoy(EnvoyProxy):
    """One Envoy process: 127.0.0.1:<listener_port> → redis_proxy → [internal listener: filter? +
    tcp_proxy] → Redis.

    module=None: no filter on the internal leg (the legs still go through the internal listener);
    internal_leg=False: redis_proxy straight to the Redis cluster (module must then be None).
    op_timeout and redis_proxy_settings go to redis_proxy's `settings`; idle_timeout is the
    internal leg's tcp_proxy idle_timeout; cluster_options are merged into the Redis cluster.
    Every other argument is EnvoyProxy's.
    """

    def __init__(self, upstream, *, internal_leg: bool = True,
                 op_timeout: Union[int, float, str] = "5s",
                 redis_proxy_settings: Optional[Mapping[str, Any]] = None,
                 internal_upstream: bool = True, **kwargs):
        if not internal_leg and kwargs.get("module") is not None:
            raise LabError("the filter needs the internal leg (it cannot be a cluster filter)")
        if "name" not in kwargs or kwargs["name"] is None:
            kwargs["name"] = ("pooled-guard" if kwargs.get("module") is not None
                              else "pooled-leg" if internal_leg else "redis-proxy")
        super().__init__(upstream, **kwargs)
        self.internal_leg = internal_leg
        self.op_timeout = op_timeout
        self.redis_proxy_settings = dict(redis_proxy_settings or {})
        self.internal_upstream = internal_upstream
        self._fixed_bootstrap: Optional[Dict[str, Any]] = None

    @classmethod
    def from_shipped_yaml(cls, upstream, *, module: FilterModule,
                          plugin_config: Union[Mapping[str, Any], str, None] = None,
                          path: Union[str, Path] = SHIPPED_POOLED_YAML,
                          **kwargs) -> "PooledEnvoy":
        """envoy/pooled.yaml as shipped, with only what a lab run must change: its ports (0,
        read back as usual), the Redis address (the lab's), the module path (absolute) and,
        if given, the plugin configuration (e.g. a 1 s keepalive so a test sees one). The
        shipped file runs the Wasm build."""
        if module.native:
            raise LabError("envoy/pooled.yaml runs the Wasm build")
        cfg = yaml.safe_load(Path(path).read_text())
        host, port = upstream if isinstance(upstream, tuple) else upstream.address
        cfg["admin"]["address"]["socket_address"].update(address=LOOPBACK, port_value=0)
        res = cfg["static_resources"]
        found = {"front": 0, "redis": 0, "wasm": 0}
        for listener in res["listeners"]:
            sa = listener.get("address", {}).get("socket_address")
            if sa is not None:
                sa.update(address=LOOPBACK, port_value=0)
                found["front"] += 1
            for chain in listener.get("filter_chains", []):
                for f in chain.get("filters", []):
                    if f["name"] == "envoy.filters.network.wasm":
                        c = f["typed_config"]["config"]
                        c["vm_config"]["code"]["local"]["filename"] = str(module.path.resolve())
                        if plugin_config is not None:
                            c["configuration"]["value"] = (plugin_config if isinstance(
                                plugin_config, str) else json.dumps(plugin_config))
                        found["wasm"] += 1
        for cluster in res["clusters"]:
            if cluster["name"] == REDIS_CLUSTER:
                for ep in cluster["load_assignment"]["endpoints"]:
                    for lb in ep["lb_endpoints"]:
                        lb["endpoint"]["address"]["socket_address"].update(
                            address=host, port_value=int(port))
                        found["redis"] += 1
        if found != {"front": 1, "redis": 1, "wasm": 1}:
            raise LabError(f"{path}: expected one socket listener, one Redis endpoint and one "
                           f"wasm filter, found {found}")
        kwargs.setdefault("name", "pooled-shipped")
        env = cls(upstream, module=module, plugin_config=plugin_config, **kwargs)
        env._fixed_bootstrap = cfg
        return env

    def bootstrap(self) -> Dict[str, Any]:
        if self._fixed_bootstrap is not None:
            return copy.deepcopy(self._fixed_bootstrap)
        cfg = super().bootstrap()  # admin, node, stats flush, the Redis cluster, the listener
        res = cfg["static_resources"]
        front = res["listeners"][0]
        front["name"] = POOLED_LISTENER
        target = LEG_CLUSTER if self.internal_leg else REDIS_CLUSTER
        front["filter_chains"] = [{"filters": [
            redis_proxy_filter(target, self.op_timeout, self.redis_proxy_settings)]}]
        if not self.internal_leg:
            return cfg
        filters = []
        if self.module is not None:
            filters.append(self.module.filter_config(self.plugin_config, self.fail_open))
        filters.append(tcp_proxy_config(self.idle_timeout))
        res["listeners"].append({
            "name": LEG_LISTENER,
            "internal_listener": {},
            "filter_chains": [{"filters": filters}],
        })
        leg_cluster: Dict[str, Any] = {
            "name": LEG_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": LEG_CLUSTER,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "envoy_internal_address": {"server_listener_name": LEG_LISTENER}}}}]}],
            },
        }
        if self.internal_upstream:
            leg_cluster["transport_socket"] = internal_upstream_transport_socket()
        res["clusters"].append(leg_cluster)
        cfg["bootstrap_extensions"] = [{
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.bootstrap"
                                      ".internal_listener.v3.InternalListener"},
        }]
        return cfg

    def _listener_port(self) -> Optional[int]:
        status, body = self._admin_get("/listeners?format=json")
        if status != 200:
            return None
        for entry in json.loads(body).get("listener_statuses", []):
            if entry.get("name") == POOLED_LISTENER:
                port = entry.get("local_address", {}).get("socket_address", {}).get("port_value")
                if port:
                    return int(port)
        return None

    # -- what the tests look at ----------------------------------------------------------------
    def pool_stats(self) -> Dict[str, Union[int, float]]:
        """The numbers that show what happened to the pooled legs, by short name:
        legs_opened/legs_active (redis_proxy's upstream connections), redis_opened (connections
        to the real Redis), leg_idle_timeouts, redis_proxy's upstream errors and timeouts, and
        the downstream (app) connections redis_proxy accepted."""
        s = self.stats(r"^(cluster\.(redis|redis_via_guard)\.upstream_|redis\.redis\.|tcp\.redis\.)")
        up = LEG_CLUSTER if self.internal_leg else REDIS_CLUSTER
        # cluster.redis_via_guard.upstream_cx_{total,active} are the legs redis_proxy opened.
        return {
            "legs_opened": s.get(f"cluster.{up}.upstream_cx_total", 0),
            "legs_active": s.get(f"cluster.{up}.upstream_cx_active", 0),
            "legs_closed_remote": s.get(f"cluster.{up}.upstream_cx_destroy_remote", 0),
            "legs_closed_local": s.get(f"cluster.{up}.upstream_cx_destroy_local", 0),
            "redis_opened": s.get(f"cluster.{REDIS_CLUSTER}.upstream_cx_total", 0),
            "upstream_rq_timeout": s.get(f"cluster.{up}.upstream_rq_timeout", 0),
            "leg_idle_timeouts": s.get("tcp.redis.idle_timeout", 0),
            "downstream_cx_total": s.get("redis.redis.downstream_cx_total", 0),
            "downstream_rq_total": s.get("redis.redis.downstream_rq_total", 0),
        }

    def __repr__(self) -> str:
        chain = ("redis_proxy alone" if not self.internal_leg else
                 "redis_proxy → internal leg [" + ("filter + " if self.with_filter else "")
                 + "tcp_proxy]")
        return (f"<PooledEnvoy {self.name} {chain} listener={self.listener_port} "
                f"admin={self.admin_port} {self.process!r}>")


def write_bootstrap(path: Union[str, Path], envoy: PooledEnvoy) -> Path:
    """The generated bootstrap as JSON (for `envoy --mode validate` and for a post-mortem)."""
    p = Path(path)
    p.write_text(json.dumps(envoy.bootstrap(), indent=2))
    return p


# -- clients: several idle spells on one pool ------------------------------------------------------
# Each session keeps ONE client (a pool) for the whole run, as an application does: warm-up
# SET/GET, then `rounds` times: idle `idle_s`, the measured SET (+ GET to verify), and 0.3 s later
# a follow-up SET/GET, which shows whether the path recovered by itself. Retries are off
# everywhere, so an error that reaches the application is counted, never hidden.

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_ROUNDS = NODE_DIR / "pooled_rounds.js"
POOLED_CLIENTS = {
    "py-async-resp2-pool": "redis.asyncio RESP2 ConnectionPool (the incident's client)",
    "py-sync-resp2-pool": "redis-py sync RESP2 ConnectionPool",
    "node-ioredis-resp2": "ioredis 6, RESP2",
}


@dataclass
class Spell:
    """The first command after one idle spell."""
    ok: bool
    error: Optional[str]
    latency_ms: Optional[float]
    verified: bool = False
    followup_error: Optional[str] = None


@dataclass
class SessionResult:
    client: str
    spells: List[Spell] = field(default_factory=list)
    harness_error: Optional[str] = None  # failed outside the measured commands: not data
    events: List[Any] = field(default_factory=list)

    @property
    def errors(self) -> List[Spell]:
        return [s for s in self.spells if not s.ok]

    def summary(self) -> str:
        errs = sorted({s.error for s in self.errors})
        lat = [round(s.latency_ms, 1) for s in self.spells if s.latency_ms is not None]
        return (f"{self.client}: {len(self.errors)}/{len(self.spells)} errors {errs} "
                f"latency_ms={lat} followup_errors="
                f"{[s.followup_error for s in self.spells if s.followup_error]}"
                + (f" HARNESS: {self.harness_error}" if self.harness_error else ""))


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def py_async_pool_session(address: Tuple[str, int], key: str, rounds: int, idle_s: float,
                                command_timeout_s: float) -> SessionResult:
    import redis.asyncio as aioredis

    from .clients import make_async_client
    res = SessionResult("py-async-resp2-pool")
    client = make_async_client(address, protocol=2, single_connection_client=False,
                               socket_timeout=command_timeout_s)
    errors = (aioredis.RedisError, OSError, asyncio.TimeoutError)
    try:
        await client.set(key, "warmup")
        if await client.get(key) != b"warmup":
            raise LabError("warm-up GET mismatch")
        for r in range(rounds):
            await asyncio.sleep(idle_s)
            value = f"after-idle-{r}"
            t0 = time.perf_counter()
            spell = Spell(False, None, None)
            try:
                await client.set(key, value)
                spell.ok = True
            except errors as exc:
                spell.error = _err(exc)
            spell.latency_ms = (time.perf_counter() - t0) * 1000
            if spell.ok:
                try:
                    spell.verified = await client.get(key) == value.encode()
                except errors:
                    pass
            await asyncio.sleep(0.3)
            try:
                await client.set(key, "followup")
                await client.get(key)
            except errors as exc:
                spell.followup_error = _err(exc)
            res.spells.append(spell)
    except Exception as exc:  # noqa: BLE001 - outside the measured commands
        res.harness_error = _err(exc)
    finally:
        try:
            await client.aclose()
        except Exception:  # noqa: BLE001
            pass
    return res


def py_sync_pool_session(address: Tuple[str, int], key: str, rounds: int, idle_s: float,
                         command_timeout_s: float) -> SessionResult:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    res = SessionResult("py-sync-resp2-pool")
    host, port = address
    client = redis.Redis(host=host, port=port, protocol=2, retry=Retry(NoBackoff(), 0),
                         retry_on_error=[], socket_timeout=command_timeout_s,
                         socket_connect_timeout=5, health_check_interval=0)
    errors = (redis.RedisError, OSError)
    try:
        client.set(key, "warmup")
        if client.get(key) != b"warmup":
            raise LabError("warm-up GET mismatch")
        for r in range(rounds):
            time.sleep(idle_s)
            value = f"after-idle-{r}"
            t0 = time.perf_counter()
            spell = Spell(False, None, None)
            try:
                client.set(key, value)
                spell.ok = True
            except errors as exc:
                spell.error = _err(exc)
            spell.latency_ms = (time.perf_counter() - t0) * 1000
            if spell.ok:
                try:
                    spell.verified = client.get(key) == value.encode()
                except errors:
                    pass
            time.sleep(0.3)
            try:
                client.set(key, "followup")
                client.get(key)
            except errors as exc:
                spell.followup_error = _err(exc)
            res.spells.append(spell)
    except Exception as exc:  # noqa: BLE001
        res.harness_error = _err(exc)
    finally:
        client.close()
    return res


async def node_pool_session(address: Tuple[str, int], key: str, rounds: int, idle_s: float,
                            command_timeout_s: float) -> SessionResult:
    res = SessionResult("node-ioredis-resp2")
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "ioredis").exists():
        res.harness_error = "node or ioredis missing (npm ci --prefix tests/lab/node)"
        return res
    args = {"host": address[0], "port": address[1], "rounds": rounds, "idle": idle_s,
            "commandTimeoutMs": int(command_timeout_s * 1000), "key": key}
    workdir = unique_workdir("node-pooled")
    proc = ManagedProcess(f"node:{key}", [node, str(NODE_ROUNDS), json.dumps(args)],
                          workdir / "node.log", cwd=NODE_DIR).start()
    try:
        deadline = time.monotonic() + rounds * (idle_s + 2 * command_timeout_s + 1) + 15
        while proc.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.alive():
            res.harness_error = "node client did not finish"
            return res
        lines = [ln for ln in proc.log_text().splitlines() if ln.startswith("{")]
        if not lines:
            res.harness_error = f"node printed no result: {proc.log_text()[-300:]}"
            return res
        r = json.loads(lines[-1])
        res.events = r.get("events", [])
        res.spells = [Spell(bool(s["ok"]), s.get("error"), s.get("latency_ms"),
                            bool(s.get("verified")), s.get("followup_error"))
                      for s in r.get("spells", [])]
        if r.get("error"):
            res.harness_error = f"{r.get('phase')}: {r['error']}"
        return res
    finally:
        proc.stop()


async def run_sessions(sessions: Sequence[Tuple[str, Tuple[str, int], str]], *, rounds: int,
                       idle_s: float, command_timeout_s: float) -> List[SessionResult]:
    """Run (client kind, address, key) sessions side by side; one result each, in order."""
    loop = asyncio.get_running_loop()
    tasks = []
    for kind, address, key in sessions:
        a = (address, key, rounds, idle_s, command_timeout_s)
        if kind == "py-async-resp2-pool":
            tasks.append(py_async_pool_session(*a))
        elif kind == "py-sync-resp2-pool":
            tasks.append(loop.run_in_executor(None, py_sync_pool_session, *a))
        elif kind == "node-ioredis-resp2":
            tasks.append(node_pool_session(*a))
        else:
            raise ValueError(kind)
    out = await asyncio.gather(*tasks, return_exceptions=True)
    return [SessionResult(kind, harness_error=_err(r)) if isinstance(r, BaseException) else r
            for (kind, _, _), r in zip(sessions, out)]
