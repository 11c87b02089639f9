"""A Redis Cluster in the lab: masters without replicas, each behind its own Envoy listener and
announced at that listener, so that CLUSTER SLOTS, CLUSTER SHARDS, MOVED and ASK send clients
through Envoy and never straight to Redis.

    client ─► Envoy 0 ─► master 0 ┐   each master: `cluster-announce-ip 127.0.0.1`,
           ─► Envoy 1 ─► master 1 ├─  `cluster-announce-port <its Envoy's listener port>`,
           ─► Envoy 2 ─► master 2 ┘   `cluster-announce-bus-port <its real bus port>`

On loopback, or behind a fault's router (faults.py, `fault=`): then every master runs in the
fault's redis namespace, on that namespace's address and its own port, and also binds the
namespace's 127.0.0.1, where the masters' cluster bus runs: the fault acts on the clients' path
(Envoy → router → Redis) and never on the gossip, which would otherwise fail the cluster.

Setup: start the masters, one Envoy each (Envoy picks its port), CONFIG SET
cluster-announce-port, CLUSTER ADDSLOTSRANGE (the 16384 slots split evenly), CLUSTER MEET, and
wait until every master says cluster_state:ok and lists every master at its Envoy address.
Admin commands go straight to Redis, each on a fresh connection (no Envoy, and no idle spell
for a fault to kill). Migrations: begin_migration(), migrate_keys(), end_migration().

The clients, with retries off: redis-py's asyncio RedisCluster (here) and ioredis's Cluster
(node/cluster_rounds.js), in two scenarios: idle_rounds() (idle spells between commands) and
busy_loop() (commands back to back, e.g. during a migration).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from .envoy_proxy import EnvoyProxy
from .procs import LOOPBACK, LabError, ManagedProcess, free_port, unique_workdir, wait_until
from .redis_server import RedisServer, RedisStartError
from .resp import RawConnection

SLOTS = 16384
NODE_SCRIPT_NAME = "cluster_rounds.js"
CLIENTS = ("redis-py", "ioredis")
# ioredis with its default clusterRetryStrategy: it reconnects once every node connection has
# closed, which hides a close (FIN) from the application but not a silent drop.
RECONNECTING = "ioredis-reconnect"

Address = Tuple[str, int]
EnvoyFactory = Callable[..., EnvoyProxy]


def _start_envoy(upstream: Address, **kwargs: Any) -> EnvoyProxy:
    return EnvoyProxy(upstream, **kwargs).start()


@dataclass
class Master:
    """One master: its Redis, its bus port, its Envoy, and what the cluster knows it by.
    `slots` is the range it was given at setup (a migration does not change it)."""
    index: int
    redis: RedisServer
    bus_port: int
    slots: Tuple[int, int]
    envoy: Optional[EnvoyProxy] = None
    node_id: str = ""

    @property
    def announced(self) -> Address:
        """Where clients are sent for this master's slots: its Envoy."""
        return self.envoy.address

    def owns(self, slot: int) -> bool:
        return self.slots[0] <= slot <= self.slots[1]


class ClusterError(LabError):
    pass


def admin(master: Master, *args: Any, timeout: float = 5.0) -> Any:
    """One command straight to a master's Redis, on a fresh connection; raises on an error."""
    with RawConnection(master.redis.address, timeout=timeout) as c:
        frame = c.command(*args, timeout=timeout)
    if frame.kind in ("-", "!"):
        raise ClusterError(f"master {master.index}: {' '.join(map(str, args))}: {frame.py()!r}")
    value = frame.py()
    return value.decode() if isinstance(value, bytes) else value


def info_fields(text: str) -> Dict[str, str]:
    """`INFO`/`CLUSTER INFO` text as {field: value}."""
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    return out


class Cluster:
    """`masters` Redis Cluster masters, no replicas, each behind its own Envoy (see module doc).

    fault: a set-up faults.Fault whose namespace hosts the masters (its Redis `timeout` too);
    None: loopback, with `timeout`. envoy: how to start an Envoy (default: EnvoyProxy(...)
    .start(); the e2e tests pass `lab.envoy`); module and plugin_config go to every Envoy.
    """

    BUS_HOST = LOOPBACK  # the masters' cluster bus and MIGRATE, in their own namespace

    def __init__(self, masters: int = 3, *, fault: Any = None, timeout: int = 0,
                 module: Any = None, plugin_config: Any = None,
                 envoy: EnvoyFactory = _start_envoy, name: str = "cluster"):
        self.count = masters
        self.fault = fault
        self.timeout = timeout
        self.module = module
        self.plugin_config = plugin_config
        self._envoy_factory = envoy
        self.name = name
        self.masters: List[Master] = []
        self._own_redises: List[RedisServer] = []

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, ready_timeout: float = 20.0) -> "Cluster":
        return self.launch().wait_ready(ready_timeout)

    def launch(self) -> "Cluster":
        """Start everything and introduce the masters; wait_ready() waits for the result.
        (Two clusters launched one after the other then wait for their state side by side.)"""
        try:
            for i in range(self.count):
                lo, hi = i * SLOTS // self.count, (i + 1) * SLOTS // self.count - 1
                redis, bus = self._start_master(i)
                m = Master(i, redis, bus, (lo, hi))
                self.masters.append(m)
                m.node_id = admin(m, "CLUSTER", "MYID")
                # At once: a master turns cluster_state:ok only a rejoin delay after it last
                # saw itself in a minority (min(cluster-node-timeout, 5 s)): the clock starts now.
                admin(m, "CLUSTER", "ADDSLOTSRANGE", *m.slots)
            for m in self.masters:
                m.envoy = self._envoy_factory(m.redis.address, module=self.module,
                                              plugin_config=self.plugin_config,
                                              name=f"{self.name}-envoy{m.index}")
                admin(m, "CONFIG", "SET", "cluster-announce-port", m.envoy.listener_port)
            first = self.masters[0]
            for m in self.masters[1:]:  # after the announce ports: gossip carries them
                admin(first, "CLUSTER", "MEET", self.BUS_HOST, m.redis.port, m.bus_port)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 20.0) -> "Cluster":
        try:
            wait_until(self._ready, timeout, 0.1, f"{self.name}: cluster_state:ok")
        except BaseException:
            self.stop()
            raise
        return self

    def _master_config(self, bus_port: int) -> Dict[str, str]:
        config = {
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",  # in the master's own work directory
            "cluster-port": str(bus_port),
            # Also the rejoin delay before cluster_state:ok (see launch()); the bus runs on
            # loopback, untouched by the faults, so a short one is safe.
            "cluster-node-timeout": "3000",
            "cluster-announce-ip": LOOPBACK,
            "cluster-announce-bus-port": str(bus_port),
        }
        if self.fault is not None:
            config["bind"] = f"{self.fault.topology.redis_addr} {self.BUS_HOST}"
        return config

    def _start_master(self, i: int) -> Tuple[RedisServer, int]:
        """A master on a free port with a free bus port (both chosen here: Redis's default bus
        port, port + 10000, may not exist or be taken). Retried on a port race."""
        name = f"{self.name}-redis{i}"
        for _attempt in range(3):
            port, bus = free_port(), free_port()
            if port == bus:
                continue
            try:
                if self.fault is not None:
                    return self.fault.add_redis(port=port, extra_config=self._master_config(bus),
                                                name=name), bus
                redis = RedisServer(timeout=self.timeout, port=port, name=name,
                                    extra_config=self._master_config(bus))
                self._own_redises.append(redis)
                return redis.start(), bus
            except RedisStartError:
                continue
        raise ClusterError(f"{name} did not start (port races?)")

    def _ready(self) -> bool:
        want = self.envoy_addresses
        for m in self.masters:
            info = info_fields(admin(m, "CLUSTER", "INFO"))
            if (info.get("cluster_state") != "ok"
                    or info.get("cluster_known_nodes") != str(self.count)):
                return False
            if {addr for _, _, addr in self.slot_map(m)} != want:
                return False
        return True

    def stop(self) -> None:
        """Stop the Envoys and loopback masters (a fault stops its own Redis servers)."""
        for m in self.masters:
            if m.envoy is not None:
                m.envoy.stop()
        for redis in self._own_redises:
            redis.stop()

    def __enter__(self) -> "Cluster":
        return self.start() if not self.masters else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- topology --------------------------------------------------------------------------
    def slot_map(self, m: Master) -> List[Tuple[int, int, Address]]:
        """CLUSTER SLOTS as master `m` answers it (straight, not through Envoy)."""
        return parse_slots(admin(m, "CLUSTER", "SLOTS"))

    @property
    def envoy_addresses(self) -> "set[Address]":
        return {m.announced for m in self.masters}

    @property
    def startup_node(self) -> Address:
        return self.masters[0].announced

    def master_for_slot(self, slot: int) -> Master:
        for m in self.masters:
            if m.owns(slot):
                return m
        raise ClusterError(f"no master owns slot {slot}")

    def master_for_key(self, key: str) -> Master:
        return self.master_for_slot(key_slot(key.encode()))

    def spread_keys(self, prefix: str, per_master: int = 2) -> List[str]:
        """Keys named `prefix:<n>`, `per_master` on every master, interleaved (master 0, 1, 2,
        0, 1, 2, ...), so that each round's first commands reach every master."""
        by_master: Dict[int, List[str]] = {m.index: [] for m in self.masters}
        n = 0
        while any(len(v) < per_master for v in by_master.values()):
            key = f"{prefix}:{n}"
            owner = by_master[self.master_for_key(key).index]
            if len(owner) < per_master:
                owner.append(key)
            n += 1
        return [by_master[i][j] for j in range(per_master) for i in sorted(by_master)]

    # -- slot migration ----------------------------------------------------------------------
    def begin_migration(self, slot: int, src: Master, dst: Master) -> None:
        """IMPORTING on the destination first, then MIGRATING on the source (the documented
        order): from now on the source answers ASK for keys it no longer has."""
        admin(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src.node_id)
        admin(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst.node_id)

    def migrate_keys(self, slot: int, src: Master, dst: Master, count: int) -> int:
        """MIGRATE up to `count` of the slot's keys from src to dst; how many were moved."""
        keys = admin(src, "CLUSTER", "GETKEYSINSLOT", slot, count)
        if keys:
            admin(src, "MIGRATE", self.BUS_HOST, dst.redis.port, "", 0, 5000, "KEYS", *keys)
        return len(keys)

    def end_migration(self, slot: int, src: Master, dst: Master) -> None:
        """The slot belongs to dst: SETSLOT NODE on dst, src, then the others. From now on the
        source answers MOVED for it."""
        others = [m for m in self.masters if m not in (src, dst)]
        for m in [dst, src, *others]:
            admin(m, "CLUSTER", "SETSLOT", slot, "NODE", dst.node_id)

    def redirects(self) -> Dict[str, int]:
        """Redirections the masters answered (INFO errorstats: MOVED, ASK) and ASKING commands
        they received (INFO commandstats), summed over masters."""
        out = {"MOVED": 0, "ASK": 0, "ASKING": 0}
        for m in self.masters:
            errs = info_fields(admin(m, "INFO", "errorstats"))
            for kind in ("MOVED", "ASK"):
                out[kind] += _count(errs.get(f"errorstat_{kind}", ""))
            cmds = info_fields(admin(m, "INFO", "commandstats"))
            out["ASKING"] += _calls(cmds.get("cmdstat_asking", ""))
        return out

    def guard_stats(self) -> Dict[str, int]:
        """The filter's stats summed over this cluster's Envoys (empty without the filter).
        Meant for the counters: gauges are summed too (read those per Envoy)."""
        total: Dict[str, int] = {}
        for m in self.masters:
            if m.envoy is not None and m.envoy.with_filter:
                for k, v in m.envoy.guard_stats().items():
                    if isinstance(v, (int, float)):
                        total[k] = total.get(k, 0) + int(v)
        return total

    def __repr__(self) -> str:
        ms = ", ".join(f"{m.redis.host}:{m.redis.port}@{m.envoy.listener_port if m.envoy else '?'}"
                       for m in self.masters)
        return f"<Cluster {self.name} [{ms}]>"


def parse_slots(reply: Any) -> List[Tuple[int, int, Address]]:
    """A RESP2 CLUSTER SLOTS reply: (first slot, last slot, master's address) per range."""
    return [(entry[0], entry[1], (entry[2][0].decode(), int(entry[2][1]))) for entry in reply]


def parse_shards(reply: Any) -> List[Address]:
    """A RESP2 CLUSTER SHARDS reply: every node's announced (ip, port)."""
    out = []
    for shard in reply:
        fields = dict(zip(shard[::2], shard[1::2]))
        for node in fields[b"nodes"]:
            nf = dict(zip(node[::2], node[1::2]))
            out.append((nf[b"ip"].decode(), int(nf[b"port"])))
    return out


def _count(stat: str) -> int:
    """'count=3' → 3 (INFO errorstats)."""
    for part in stat.split(","):
        if part.startswith("count="):
            return int(part[6:])
    return 0


def _calls(stat: str) -> int:
    """'calls=3,usec=...' → 3 (INFO commandstats)."""
    for part in stat.split(","):
        if part.startswith("calls="):
            return int(part[6:])
    return 0


# -- clients ---------------------------------------------------------------------------------
@dataclass
class Op:
    """One command a client sent and what came of it."""
    round: int  # 0: warm-up (idle_rounds) or the busy loop
    key: str
    command: str
    ok: bool
    error: Optional[str]
    ms: float
    at: float  # when it was sent (epoch seconds)


@dataclass
class ClientRun:
    """Everything one client did against one cluster."""
    client: str
    label: str
    ops: List[Op] = field(default_factory=list)
    last: Dict[str, str] = field(default_factory=dict)  # the last value SET per key
    harness_error: Optional[str] = None
    events: List[Any] = field(default_factory=list)

    def errors(self, rnd: Optional[int] = None) -> List[Op]:
        return [o for o in self.ops if not o.ok and (rnd is None or o.round == rnd)]

    def first_after_idle(self) -> List[Op]:
        """The first command of every round after an idle spell (rounds 1...)."""
        firsts: Dict[int, Op] = {}
        for o in self.ops:
            if o.round > 0 and o.round not in firsts:
                firsts[o.round] = o
        return [firsts[r] for r in sorted(firsts)]

    def summary(self) -> str:
        errs = self.errors()
        kinds = sorted({(e.error or "")[:60] for e in errs})
        return (f"{self.label:6} {self.client:17}: {len(self.ops)} commands, {len(errs)} errors"
                + (f" {kinds}" if kinds else "")
                + (f", harness error: {self.harness_error}" if self.harness_error else ""))


def make_cluster_client(startup: Address, *, timeout_s: float) -> RedisCluster:
    """redis-py's asyncio RedisCluster with every retry off (redirections are still followed).
    RESP2 (redis-py 8.1's default is RESP3, ioredis 6's too): so the two clients cover both.
    Its node connections are lent without a look, so a closed one is used as is."""
    host, port = startup
    return RedisCluster(host=host, port=port, protocol=2, retry=Retry(NoBackoff(), 0),
                        socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                        health_check_interval=0)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _py_set_get(client: RedisCluster, run: ClientRun, rnd: int, key: str,
                      value: str) -> None:
    async def one(command: str, coro_fn) -> bool:
        at, t0 = time.time(), time.perf_counter()
        try:
            await coro_fn()
            ok, error = True, None
        except Exception as exc:  # noqa: BLE001 - every failure of a command is data
            ok, error = False, _short(exc)
        run.ops.append(Op(rnd, key, command, ok, error, (time.perf_counter() - t0) * 1000, at))
        return ok

    async def get() -> None:
        got = await client.get(key)
        if got != value.encode():
            raise LabError(f"wrong value {got!r}, wanted {value}")

    if await one("SET", lambda: client.set(key, value)):
        run.last[key] = value
        await one("GET", get)


async def py_idle_rounds(startup: Address, keys: Sequence[str], *, rounds: int, idle_s: float,
                         timeout_s: float, label: str) -> ClientRun:
    """redis-py: SET/GET every key (round 0), then `rounds` × (idle, SET/GET every key)."""
    run = ClientRun("redis-py", label)
    client = make_cluster_client(startup, timeout_s=timeout_s)
    try:
        await client.initialize()
        for rnd in range(rounds + 1):
            if rnd:
                await asyncio.sleep(idle_s)
            for key in keys:
                await _py_set_get(client, run, rnd, key, f"{rnd}:{key}")
    except Exception as exc:  # noqa: BLE001
        run.harness_error = _short(exc)
    finally:
        await client.aclose()
    return run


async def py_busy_loop(startup: Address, keys: Sequence[str], *, until: float, pause_s: float,
                       timeout_s: float, label: str) -> ClientRun:
    """redis-py: SET/GET every key over and over, `pause_s` between pairs, until `until`."""
    run = ClientRun("redis-py", label)
    client = make_cluster_client(startup, timeout_s=timeout_s)
    try:
        await client.initialize()
        n = 0
        while time.time() < until:
            for key in keys:
                await _py_set_get(client, run, 0, key, f"{n}:{key}")
                await asyncio.sleep(pause_s)
            n += 1
    except Exception as exc:  # noqa: BLE001
        run.harness_error = _short(exc)
    finally:
        await client.aclose()
    return run


def _node_binary() -> str:
    from .matrix import node_binary  # checks that ioredis is installed

    return node_binary()


async def node_session(startup: Address, keys: Sequence[str], *, label: str, mode: str,
                       timeout_s: float, rounds: int = 0, idle_s: float = 0.0,
                       until: float = 0.0, pause_s: float = 0.0,
                       reconnect: bool = False) -> ClientRun:
    """ioredis's Cluster (node/cluster_rounds.js) in mode "idle" or "busy", as above.
    reconnect: keep ioredis's default clusterRetryStrategy (reconnect once every node
    connection has closed) instead of none."""
    from .matrix import NODE_DIR

    args = {"host": startup[0], "port": startup[1], "mode": mode, "keys": list(keys),
            "rounds": rounds, "idle": idle_s, "commandTimeoutMs": int(timeout_s * 1000),
            "untilMs": int(until * 1000), "pauseMs": int(pause_s * 1000), "reconnect": reconnect}
    workdir = unique_workdir("node-cluster")
    proc = ManagedProcess(f"node-cluster:{label}", [_node_binary(),
                          str(NODE_DIR / NODE_SCRIPT_NAME), json.dumps(args)],
                          workdir / "node.log", cwd=NODE_DIR).start()
    run = ClientRun(RECONNECTING if reconnect else "ioredis", label)
    try:
        budget = (rounds * (idle_s + len(keys) * 2 * timeout_s) + max(0.0, until - time.time())
                  + len(keys) * 2 * timeout_s + 20)
        deadline = time.monotonic() + budget
        while proc.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.alive():
            run.harness_error = "node client did not finish"
            return run
        lines = [ln for ln in proc.log_text().splitlines() if ln.startswith("{")]
        if not lines:
            run.harness_error = f"node client printed no result: {proc.log_text()[-300:]}"
            return run
        r = json.loads(lines[-1])
        run.ops = [Op(*o) for o in r["ops"]]
        run.last = r["last"]
        run.events = r["events"]
        run.harness_error = r["error"]
        return run
    finally:
        proc.stop()


async def idle_rounds(startup: Address, keys_by_client: Dict[str, Sequence[str]], *, label: str,
                      rounds: int, idle_s: float, timeout_s: float) -> List[ClientRun]:
    """The clients at once (CLIENTS, and RECONNECTING if it has keys), each on its own keys,
    idle spells between commands."""
    sessions = [
        py_idle_rounds(startup, keys_by_client["redis-py"], rounds=rounds, idle_s=idle_s,
                       timeout_s=timeout_s, label=label),
        node_session(startup, keys_by_client["ioredis"], label=label, mode="idle",
                     rounds=rounds, idle_s=idle_s, timeout_s=timeout_s)]
    if RECONNECTING in keys_by_client:
        sessions.append(node_session(startup, keys_by_client[RECONNECTING], label=label,
                                     mode="idle", rounds=rounds, idle_s=idle_s,
                                     timeout_s=timeout_s, reconnect=True))
    return list(await asyncio.gather(*sessions))


async def busy_loop(startup: Address, keys_by_client: Dict[str, Sequence[str]], *, label: str,
                    until: float, pause_s: float, timeout_s: float) -> List[ClientRun]:
    """Both clients at once, commands back to back until `until` (epoch seconds)."""
    return list(await asyncio.gather(
        py_busy_loop(startup, keys_by_client["redis-py"], until=until, pause_s=pause_s,
                     timeout_s=timeout_s, label=label),
        node_session(startup, keys_by_client["ioredis"], label=label, mode="busy",
                     until=until, pause_s=pause_s, timeout_s=timeout_s)))
