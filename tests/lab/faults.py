"""Faults on the path from Envoy to Redis that kill idle connections, made and removed by code.

Each fault owns a small private network (never anything off the machine):

    root netns                     "nat" netns (router)              "redis" netns
    Envoy, app ── rg<slot> .1/30 ══ rt0 .2/30
                                    rt1 .5/30 ══════════════════════ eth0 .6/30 ── redis-server

(addresses in the slot's /29 of 10.199.0.0/16)

Envoy (root namespace) connects to Redis's address 10.199.S.6 through the router namespace, where
conntrack, iptables and sysctls are private to this instance (the conntrack sysctls used here are
per network namespace: the root namespace's values are never touched; `sysctls_are_per_netns`
checks it). The slot S is unique across processes (it is taken by creating the root-side veth,
which fails if another instance holds it), so tests may run in parallel processes.

The faults (the letters are the matrix's):
  a NatTimeout("drop")  conntrack forgets a flow idle for `cutoff_s`; with tcp_loose=0 the next
                        packet is INVALID and silently dropped (Azure LB, GCP Cloud NAT)
  b NatTimeout("reset") same, but INVALID packets get a TCP reset (AWS NAT Gateway, NLB)
  c RedisTimeout        Redis `timeout N` closes the idle client (FIN)
  d RedisRestart        arm(): Redis restarts (SIGTERM, start again) while the pool is idle
  e BlackHole           arm(): every flow established so far is dropped both ways from now on
                        (a dead path or host); new connections still work
  f SlowRedis           arm(): Redis stalls (`DEBUG SLEEP stall_s`, back to back) and answers
                        everything late, but inside the filter's ping_timeout; must NOT bite
                        (a control for false reconnect signals). tc netem would be the network
                        way, but this kernel has no sch_netem (CONFIG_NET_SCH_NETEM unset).
  g RedisCrashRestart   arm(): Redis restarts, but its FINs are lost (a host crash or failover
                        on the same address): an old connection learns it only from the RST
                        that answers its next packet

Cleanup: every fault is a context manager (namespaces, and with them the veths, routes, iptables
rules and conntrack tables, go on exit, also on exceptions and Ctrl-C); an atexit hook removes
what is still set up; and namespaces left behind by a process that was SIGKILLed are removed by
the next instance (their names carry the owner's pid).
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import re
import subprocess
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

from .procs import LAB_NETWORK, LabError, next_instance_number
from .redis_server import RedisServer
from .resp import EOFReached, RawConnection, encode_command

NS_PREFIX = "rig-"
_NS_RE = re.compile(r"^rig-(\d+)-(\d+)-(nat|redis)$")
_SLOTS = LAB_NETWORK.num_addresses // 8  # one /29 per instance: two /30 links

_live: "set[Topology]" = set()
_live_lock = threading.Lock()


class FaultError(LabError):
    """A fault could not be set up, or the kernel did not behave as the fault needs."""


def _run(argv: Sequence[str], check: bool = True,
         timeout: float = 10.0) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise FaultError(f"{' '.join(argv)} failed ({proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces() -> List[str]:
    """Delete lab namespaces whose owner process is gone (it was SIGKILLed before cleanup).
    Deleting the router namespace destroys its veths, so the root-side link and route go too."""
    out = _run(["ip", "netns", "list"], check=False).stdout
    removed = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NS_RE.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            if _run(["ip", "netns", "del", name], check=False).returncode == 0:
                removed.append(name)
    return removed


def _root_networks() -> List[ipaddress.IPv4Network]:
    """Every IPv4 route and address of the root namespace (to never shadow a real network)."""
    nets = []
    for argv in (["ip", "-4", "-o", "route", "show", "table", "all"], ["ip", "-4", "-o", "addr"]):
        for word in _run(argv, check=False).stdout.split():
            try:
                net = ipaddress.ip_network(word, strict=False)
            except ValueError:
                continue
            if net.prefixlen > 0:
                nets.append(net)
    return nets


class Topology:
    """root netns ── router netns ── redis netns, on private addresses (see the module doc)."""

    def __init__(self) -> None:
        self.tag = f"{os.getpid()}-{next_instance_number()}"
        self.nat_ns = f"{NS_PREFIX}{self.tag}-nat"
        self.redis_ns = f"{NS_PREFIX}{self.tag}-redis"
        self.slot: Optional[int] = None
        self.root_if: Optional[str] = None
        self._ns_made: List[str] = []

    # -- addresses -------------------------------------------------------------------------
    def _addr(self, offset: int) -> str:
        return str(LAB_NETWORK.network_address + 8 * self.slot + offset)

    @property
    def root_addr(self) -> str:
        return self._addr(1)

    @property
    def redis_addr(self) -> str:
        return self._addr(6)

    # -- lifecycle -------------------------------------------------------------------------
    def setup(self) -> "Topology":
        remove_stale_namespaces()
        with _live_lock:
            _live.add(self)
        try:
            for ns in (self.nat_ns, self.redis_ns):
                _run(["ip", "netns", "add", ns])
                self._ns_made.append(ns)
            self._take_slot()
            nat, red = self.nat_ns, self.redis_ns
            _run(["ip", "addr", "add", f"{self.root_addr}/30", "dev", self.root_if])
            _run(["ip", "link", "set", "dev", self.root_if, "up"])
            _run(["ip", "-n", nat, "link", "set", "dev", "lo", "up"])
            _run(["ip", "-n", nat, "addr", "add", f"{self._addr(2)}/30", "dev", "rt0"])
            _run(["ip", "-n", nat, "link", "set", "dev", "rt0", "up"])
            _run(["ip", "-n", nat, "link", "add", "rt1", "type", "veth",
                  "peer", "name", "eth0", "netns", red])
            _run(["ip", "-n", nat, "addr", "add", f"{self._addr(5)}/30", "dev", "rt1"])
            _run(["ip", "-n", nat, "link", "set", "dev", "rt1", "up"])
            _run(["ip", "-n", red, "link", "set", "dev", "lo", "up"])
            _run(["ip", "-n", red, "addr", "add", f"{self.redis_addr}/30", "dev", "eth0"])
            _run(["ip", "-n", red, "link", "set", "dev", "eth0", "up"])
            _run(["ip", "-n", red, "route", "add", "default", "via", self._addr(5)])
            _run(["ip", "route", "add", f"{self._addr(4)}/30", "via", self._addr(2),
                  "dev", self.root_if])
            self.sysctl("net.ipv4.ip_forward", "1")
        except BaseException:
            self.teardown()
            raise
        return self

    def _take_slot(self) -> None:
        """Claim a free /29 by creating the root-side veth named after it (atomic: creating a
        link whose name exists fails), skipping any range the machine already routes."""
        taken = _root_networks()
        start = (os.getpid() * 131 + next_instance_number() * 17) % _SLOTS
        for i in range(256):
            slot = (start + i) % _SLOTS
            net = ipaddress.ip_network(f"{LAB_NETWORK.network_address + 8 * slot}/29")
            if any(net.overlaps(t) for t in taken):
                continue
            name = f"rg{slot}"
            proc = _run(["ip", "link", "add", name, "type", "veth",
                         "peer", "name", "rt0", "netns", self.nat_ns], check=False)
            if proc.returncode == 0:
                self.slot, self.root_if = slot, name
                return
            if "exists" not in proc.stderr:
                raise FaultError(f"cannot create veth {name}: {proc.stderr.strip()}")
        raise FaultError("no free fault-lab address slot")

    def teardown(self) -> None:
        """Delete both namespaces: their veths (and so the root-side link and route), iptables
        rules and conntrack tables go with them. Idempotent."""
        for ns in reversed(self._ns_made):
            _run(["ip", "netns", "del", ns], check=False)
        self._ns_made = []
        if self.root_if is not None:
            _run(["ip", "link", "del", self.root_if], check=False)  # normally already gone
            self.root_if = None
        with _live_lock:
            _live.discard(self)

    def __enter__(self) -> "Topology":
        return self.setup()

    def __exit__(self, *exc) -> None:
        self.teardown()

    # -- the router ------------------------------------------------------------------------
    def nat(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside the router namespace."""
        return _run(["ip", "netns", "exec", self.nat_ns, *argv], check=check)

    def in_redis_ns(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside Redis's namespace (its host, as far as the network goes)."""
        return _run(["ip", "netns", "exec", self.redis_ns, *argv], check=check)

    def sysctl(self, key: str, value: str) -> None:
        self.nat("sysctl", "-qw", f"{key}={value}")
        got = self.read_sysctl(key)
        if got != str(value):
            raise FaultError(f"{key} is {got} in {self.nat_ns}, wanted {value}")

    def read_sysctl(self, key: str) -> str:
        return self.nat("sysctl", "-n", key).stdout.strip()

    def iptables(self, *args: str) -> None:
        self.nat("iptables", "-w", *args)

    def conntrack_flows(self) -> List[str]:
        """The router's TCP conntrack entries towards Redis (one line each)."""
        proc = self.nat("conntrack", "-L", "-p", "tcp", "--orig-dst", self.redis_addr,
                        check=False)
        return [ln for ln in proc.stdout.splitlines() if ln.startswith("tcp")]

    def __repr__(self) -> str:
        redis = self.redis_addr if self.slot is not None else "?"
        return f"<Topology slot={self.slot} redis={redis}>"


def sysctls_are_per_netns(topology: Topology,
                          key: str = "net.netfilter.nf_conntrack_tcp_timeout_established") -> bool:
    """True if `key` in the router namespace is independent of the root namespace's value
    (on this kernel it is, for the conntrack timeouts and tcp_loose)."""
    path = "/proc/sys/" + key.replace(".", "/")
    with open(path) as f:
        root_before = f.read().strip()
    if root_before in ("0", "1"):
        probe = "1" if root_before == "0" else "0"  # a boolean such as tcp_loose
    else:
        probe = "7" if root_before != "7" else "8"
    old = topology.read_sysctl(key)
    topology.sysctl(key, probe)
    try:
        with open(path) as f:
            return f.read().strip() == root_before
    finally:
        topology.sysctl(key, old)


class Fault:
    """A fault on the Envoy → Redis path. `with fault:` builds the network and starts Redis
    inside it; `address` is what Envoy connects to. The harness calls arm() `arm_at_s` into
    each idle spell (for faults that start mid-idle) and disarm() after the round.

    cutoff_s: idle time after which an idle connection is dead (None if the fault starts at
    arm() instead). expect_bite: whether an unfiltered chain should see errors at all.
    tls: Redis speaks only TLS (RedisServer(tls=True): `redis.ca_path` is its CA).
    """

    key = "?"
    title = "fault"
    cutoff_s: Optional[float] = None
    arm_at_s: Optional[float] = None
    expect_bite = True

    def __init__(self, *, redis_timeout: int = 0, tls: bool = False) -> None:
        self.topology = Topology()
        self.redis_timeout = redis_timeout
        self.tls = tls
        self.redis: Optional[RedisServer] = None
        self.more_redises: List[RedisServer] = []  # add_redis(): e.g. Redis Cluster masters
        self.armed = False
        self.extra_redis_config: Dict[str, str] = {}

    def redis_config(self) -> Dict[str, str]:
        return {}

    def with_redis_config(self, config: Dict[str, str]) -> "Fault":
        """More redis.conf lines for the Redis this fault starts (requirepass, ACL `user`
        lines, ...); call before setup()."""
        self.extra_redis_config.update(config)
        return self

    def configure_router(self) -> None:
        """Fault-specific sysctls and iptables rules in the router, before Redis starts."""

    def setup(self) -> "Fault":
        self.topology.setup()
        try:
            self.configure_router()
            self.redis = RedisServer(timeout=self.redis_timeout, bind=self.topology.redis_addr,
                                     netns=self.topology.redis_ns,
                                     extra_config={**self.redis_config(),
                                                   **self.extra_redis_config},
                                     name=f"redis-{self.key}", tls=self.tls).start()
        except BaseException:
            self.teardown()
            raise
        return self

    def add_redis(self, *, port: Optional[int] = None,
                  extra_config: Optional[Dict[str, str]] = None, name: str = "") -> RedisServer:
        """Start one more Redis behind this fault: the same namespace and address, its own
        port, the fault's `timeout` and Redis config plus extra_config (tests/lab/cluster.py
        puts a Redis Cluster's masters here). Stopped on teardown; arm() acts on `redis` only."""
        config = {**self.redis_config(), **(extra_config or {})}
        redis = RedisServer(timeout=self.redis_timeout, port=port, bind=self.topology.redis_addr,
                            netns=self.topology.redis_ns, extra_config=config,
                            name=name or f"redis-{self.key}-{len(self.more_redises) + 2}")
        self.more_redises.append(redis)
        return redis.start()

    def arm(self) -> None:
        """Start the fault now (mid-idle). No-op for faults driven by an idle cutoff."""
        self.armed = True

    def disarm(self) -> None:
        """Make the path healthy for new connections again (between rounds)."""
        self.armed = False

    def teardown(self) -> None:
        try:
            if self.armed:
                self.disarm()
        finally:
            for redis in self.more_redises:
                redis.stop()
            if self.redis is not None:
                self.redis.stop()
            self.topology.teardown()

    def __enter__(self) -> "Fault":
        return self.setup()

    def __exit__(self, *exc) -> None:
        self.teardown()

    @property
    def address(self) -> Tuple[str, int]:
        return self.redis.address

    def describe(self) -> str:
        return self.title

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()} {self.topology!r}>"


class NatTimeout(Fault):
    """(a)/(b) A NAT that forgets flows idle for `cutoff_s`: conntrack's established timeout
    in the router, tcp_loose=0 (a mid-stream packet never re-creates a flow), and INVALID
    packets dropped (mode "drop") or answered with a TCP reset (mode "reset")."""

    def __init__(self, mode: str = "drop", cutoff_s: int = 2, *, tls: bool = False) -> None:
        super().__init__(tls=tls)
        if mode not in ("drop", "reset"):
            raise ValueError(mode)
        self.mode = mode
        self.cutoff_s = cutoff_s
        self.key = "a" if mode == "drop" else "b"
        self.title = (f"NAT forgets idle flows after {cutoff_s}s, "
                      + ("drops silently" if mode == "drop" else "answers with RST"))

    def configure_router(self) -> None:
        t = self.topology
        t.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")
        t.sysctl("net.netfilter.nf_conntrack_tcp_timeout_established", str(int(self.cutoff_s)))
        target = (["-j", "DROP"] if self.mode == "drop"
                  else ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"])
        t.iptables("-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", *target)

    def measure_forget(self, idle_s: float, reply_wait_s: float = 1.0) -> Dict[str, object]:
        """A raw connection straight to Redis through the router (no Envoy): PING, idle, PING.
        Returns whether the flow was still in conntrack after the idle spell, and what the
        second PING got: 'reply', 'silence' (dropped) or 'reset'."""
        result: Dict[str, object] = {"idle_s": idle_s}
        with RawConnection(self.address, timeout=5) as c:
            local_port = c.sock.getsockname()[1]
            assert c.command("PING").raw == b"+PONG\r\n"
            time.sleep(idle_s)
            result["conntrack_entry"] = any(f"sport={local_port} " in f
                                            for f in self.topology.conntrack_flows())
            t0 = time.monotonic()
            try:
                c.send(encode_command("PING"))
                data = c.expect_silence(reply_wait_s)
                result["outcome"] = "reply" if data else "silence"
            except EOFReached as eof:
                result["outcome"] = "reset" if eof.reset else "eof"
            except (ConnectionResetError, BrokenPipeError):
                result["outcome"] = "reset"
            result["after_s"] = time.monotonic() - t0
        return result


class RedisTimeout(Fault):
    """(c) Redis `timeout N`: Redis closes a client idle for more than N s (its check runs in
    whole seconds, so the close comes between N and N+1 s)."""

    key = "c"

    def __init__(self, cutoff_s: int = 2, *, tls: bool = False) -> None:
        super().__init__(redis_timeout=cutoff_s, tls=tls)
        self.cutoff_s = cutoff_s + 1  # worst case, see above
        self.title = f"Redis `timeout {cutoff_s}`"


class RedisRestart(Fault):
    """(d) Redis restarts (SIGTERM, then a new process on the same address) while the pool is
    idle: every pooled connection was closed by the old process."""

    key = "d"
    title = "Redis restarted while idle"
    arm_at_s = 0.5

    def arm(self) -> None:
        super().arm()
        self.redis.restart()


class RedisCrashRestart(Fault):
    """(g) Redis restarts while the pool is idle, but the old connections never hear a FIN (a
    crashed host or a failover to a new host on the same address): Redis's namespace drops its
    outgoing FINs during the restart; the next packet of an old flow is answered with a RST
    (the new Redis has no socket for it). Variant of (d), where Envoy relays a FIN at once."""

    key = "g"
    title = "Redis restarted while idle, FINs lost (host crash)"
    arm_at_s = 0.5

    def __init__(self) -> None:
        super().__init__()
        self._rule = False

    def _fin_rule(self, op: str) -> None:
        self.topology.in_redis_ns("iptables", "-w", op, "OUTPUT", "-p", "tcp", "--sport",
                                  str(self.redis.port), "--tcp-flags", "FIN", "FIN", "-j", "DROP")

    def arm(self) -> None:
        super().arm()
        self._fin_rule("-A")
        self._rule = True
        self.redis.restart()

    def disarm(self) -> None:
        """Let the new Redis's FINs out again (the old connections are gone by now)."""
        super().disarm()
        if self._rule:
            self._rule = False
            self._fin_rule("-D")


class BlackHole(Fault):
    """(e) From arm() on, every flow through the router that exists at that moment is dropped
    both ways (its conntrack entry gets mark 1; a FORWARD rule drops marked flows): a dead path
    or host. New connections are not affected, so a client that reconnects can carry on."""

    key = "e"
    title = "black hole for established flows, from mid-idle"
    arm_at_s = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.flows_blackholed = 0

    def configure_router(self) -> None:
        # The rule exists from the start, so conntrack follows every flow before arm().
        self.topology.iptables("-A", "FORWARD", "-m", "connmark", "--mark", "0x1/0x1",
                               "-j", "DROP")

    def arm(self) -> None:
        super().arm()
        proc = self.topology.nat("conntrack", "-U", "-p", "tcp", "--orig-dst",
                                 self.topology.redis_addr, "--mark", "1", check=False)
        m = re.search(r"(\d+) flow entries have been updated", proc.stderr + proc.stdout)
        self.flows_blackholed = int(m.group(1)) if m else 0
        if self.flows_blackholed == 0:
            raise FaultError(f"black hole: no flow was marked ({proc.stderr.strip()})")

    # disarm(): nothing. The marked flows stay dead (as after a real path failure); deleting
    # their entries would let them come back to life as new, unmarked flows.


class Outage(Fault):
    """A path outage from arm() to disarm(): the router drops every packet to and from Redis,
    new connections included (a black hole that ends). Flows that survive it carry on after."""

    key = "o"
    title = "path outage (every packet dropped while armed)"

    def _rules(self, op: str) -> None:
        for direction in ("-d", "-s"):
            self.topology.iptables(op, "FORWARD", direction, self.topology.redis_addr,
                                   "-j", "DROP")

    def arm(self) -> None:
        super().arm()
        self._rules("-I")

    def disarm(self) -> None:
        super().disarm()
        self._rules("-D")


class SlowRedis(Fault):
    """(f) From arm() to disarm(), Redis is busy: `DEBUG SLEEP stall_s` back to back (with
    `gap_s` between), so every reply, the filter's PONGs included, comes up to stall_s late.
    Choose stall_s below the filter's ping_timeout: the filter must not close anything."""

    key = "f"
    arm_at_s = 0.3
    expect_bite = False

    def __init__(self, stall_s: float = 1.2, gap_s: float = 0.05) -> None:
        super().__init__()
        self.stall_s = stall_s
        self.gap_s = gap_s
        self.title = f"slow Redis: stalls of {stall_s:g}s (DEBUG SLEEP) from mid-idle"
        self.stalls = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def redis_config(self) -> Dict[str, str]:
        return {"enable-debug-command": "yes"}

    def _loop(self) -> None:
        try:
            with RawConnection(self.address, timeout=self.stall_s + 5) as c:
                while not self._stop.is_set():
                    reply = c.command("DEBUG", "SLEEP", f"{self.stall_s:g}",
                                      timeout=self.stall_s + 5)
                    if reply.raw != b"+OK\r\n":
                        raise FaultError(f"DEBUG SLEEP answered {reply.raw!r}")
                    self.stalls += 1
                    self._stop.wait(self.gap_s)
        except BaseException as exc:  # noqa: BLE001 - reported by disarm()
            self._error = exc

    def arm(self) -> None:
        super().arm()
        self._stop.clear()
        self._error = None
        self._thread = threading.Thread(target=self._loop, name="slow-redis", daemon=True)
        self._thread.start()

    def disarm(self) -> None:
        super().disarm()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.stall_s + 6)
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise FaultError(f"slow Redis loop failed: {err!r}")


def all_faults(cutoff_s: int = 2, stall_s: float = 1.2) -> List[Fault]:
    """One instance of each fault (a)–(g), not set up yet."""
    return [NatTimeout("drop", cutoff_s), NatTimeout("reset", cutoff_s), RedisTimeout(cutoff_s),
            RedisRestart(), BlackHole(), SlowRedis(stall_s), RedisCrashRestart()]


def make_fault(key: str, cutoff_s: int = 2, stall_s: float = 1.2) -> Fault:
    for f in all_faults(cutoff_s, stall_s):
        if f.key == key:
            return f
    raise ValueError(f"unknown fault {key!r} (a–g)")


def live_topologies() -> "list[Topology]":
    with _live_lock:
        return list(_live)


def _teardown_all() -> None:
    for t in live_topologies():
        try:
            t.teardown()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(_teardown_all)
