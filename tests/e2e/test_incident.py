"""(a) The incident: Redis `timeout 2` closes idle pooled connections; the app's next command fails.

The client is redis.asyncio with every retry off, doing SET/GET and then idling 4 s, several
rounds. Three client shapes, run side by side:
- RESP3, single_connection_client=True  (sends on its connection without looking first)
- RESP2, single_connection_client=True
- RESP3, ConnectionPool (redis-py 8.1 skips its checkout check when RESP3 maintenance
  notifications are on, its RESP3 default, so a closed pooled connection is used as is).
(A RESP2 ConnectionPool hides a FIN: get_connection() sees EOF at checkout and reconnects.)

Without the filter every client must hit "Connection closed by server." (the fault must bite,
or the with-filter half proves nothing). With the filter at keepalive_interval 1s: zero errors.
"""

from __future__ import annotations

import asyncio


from lab import run_incident

ROUNDS = 3
IDLE_S = 4.0
REDIS_TIMEOUT = 2

CLIENTS = [
    ("resp3-single", dict(protocol=3, single_connection_client=True)),
    ("resp2-single", dict(protocol=2, single_connection_client=True)),
    ("resp3-pool", dict(protocol=3, single_connection_client=False)),
]


async def _run_all(address):
    return await asyncio.gather(*(
        run_incident(address, rounds=ROUNDS, idle_s=IDLE_S, label=label, **kw)
        for label, kw in CLIENTS))


def test_incident_without_filter_connections_die(lab):
    redis = lab.redis(timeout=REDIS_TIMEOUT)
    envoy = lab.envoy(redis)  # plain tcp_proxy
    results = asyncio.run(_run_all(envoy.address))
    for r in results:
        print(r.summary())
    for r in results:
        assert r.errors, f"{r.label}: the fault did not bite through plain Envoy: {r.summary()}"
        assert all("Connection closed by server." in t for t in r.error_texts), r.error_texts
    # Every idle spell that started on a live connection killed it: the client reconnects on
    # the command after an error, so failures alternate with successes on a fresh connection.
    assert sum(len(r.errors) for r in results) >= len(CLIENTS) * ((ROUNDS + 1) // 2)


def test_incident_with_filter_no_errors(lab, module):
    redis = lab.redis(timeout=REDIS_TIMEOUT)
    envoy = lab.envoy(redis, module=module,
                      plugin_config={"keepalive_interval": "1s", "ping_timeout": "5s"})
    results = asyncio.run(_run_all(envoy.address))
    for r in results:
        print(r.summary())
    for r in results:
        assert not r.errors, f"{r.label}: errors through the filter: {r.summary()}"
    stats = envoy.guard_stats()
    print("filter stats:", stats)
    assert stats.get("keepalive.sent", 0) > 0, stats
    assert stats.get("keepalive.answered", 0) > 0, stats
    assert stats.get("keepalive.failed", 0) == 0, stats
    # Each client idled ROUNDS × 4 s at a 1 s interval: at least ~3 keepalives per idle spell.
    assert stats["keepalive.sent"] >= len(CLIENTS) * ROUNDS * 2, stats
