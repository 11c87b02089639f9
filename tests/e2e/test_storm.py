"""Reconnect storms: idle connections that went quiet together are not all closed at once.

500 idle connections through the filter (keepalive 1 s, ping_timeout 500 ms) go quiet in one
sweep (one GET on each, all within 100 ms), as after a burst of traffic or a pool opened at
once; 3 s later Redis stalls (SIGSTOP) for 2.5 s, longer than a keepalive and its timeout, so
every one of them PINGs into the stall and is closed (the reconnect signal); a pool reconnects
each at once (tests/lab/storm.py). Each connection's keepalives come up to a fifth of the
interval early, by an amount fixed per connection (its spread), so after three keepalives the
closes spread over most of a second; without the spread they came within 100 ms (measured with
the build before it: 100% of them in the busiest 100 ms, tests/bench/storm.py).

The control: 50 connections through plain Envoy on the same Redis see no close at all (the
stall is otherwise invisible to an idle client), so the closes are the filter's.
Wall time: about 8 s per build.
"""

from __future__ import annotations

import socket
import time

from lab.storm import CLUSTER, Pool, burst, open_pool

GUARD = {"keepalive_interval": "1s", "ping_timeout": "500ms", "probe_after": "0s"}
CONNECTIONS = 500
IDLE_S = 3.0
STALL_S = 2.5
# The spread after three keepalives is 3 × 200 ms; the wasm build's tick is 50 ms. Without it,
# every close falls in one or two ticks.
MAX_BUSIEST_SHARE = 0.35


def still_open(socks: "list[socket.socket]") -> int:
    """Sockets with nothing to read and no close (a non-blocking read would block)."""
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(64):
                continue
        except BlockingIOError:
            n += 1
        except OSError:
            continue
    return n


def test_a_stall_closes_idle_connections_spread_out_and_the_pool_comes_back(lab, module):
    redis = lab.redis(extra_config={"maxclients": "4000"})
    envoy = lab.envoy(redis, module=module, plugin_config=GUARD, cluster_options=CLUSTER)
    plain = lab.envoy(redis, name="envoy-plain")
    control = open_pool(plain.listener_port, 50)
    socks = open_pool(envoy.listener_port, CONNECTIONS)
    pool = None
    try:
        sweep = burst(socks)
        quiet = time.monotonic()
        # The premise: they all went quiet within 100 ms, two ticks of the wasm build.
        assert sweep < 0.1, f"the sweep took {sweep * 1000:.0f} ms"
        pool = Pool(envoy.listener_port, socks)
        st = pool.run(redis, freeze_at=quiet + IDLE_S, stall_s=STALL_S,
                      end_by=quiet + IDLE_S + STALL_S + 20)
        closes = sorted(t - st.frozen_at for t in st.closes)
        share = st.busiest_share()
        print(f"{len(closes)} closes from {closes[0]:.2f} s to {closes[-1]:.2f} s after the "
              f"freeze; busiest 100 ms {share:.0%}; per 100 ms "
              f"{[n for n in st.buckets(st.closes, 0.0, STALL_S) if n]}; back "
              f"{st.recovery_s():.2f} s after the thaw; {len(st.attempts)} reconnects")
        assert st.stray == 0, "an idle client read bytes it did not ask for (a leaked PONG)"
        assert len(closes) == CONNECTIONS, "a connection PINGed into the stall was not closed"
        assert closes[-1] <= STALL_S, "a close came after the thaw"
        assert share <= MAX_BUSIEST_SHARE, f"the busiest 100 ms held {share:.0%} of the closes"
        assert st.recovered, f"{len(st.ready)} of {len(closes)} slots came back"
        assert still_open(control) == len(control), "plain Envoy closed an idle connection"
        stats = envoy.guard_stats()
        assert stats["reconnect_signals"] == CONNECTIONS, stats
        assert stats.get("passthrough", 0) == 0, stats
    finally:
        if pool is not None:
            pool.close()
        else:
            for s in socks:
                s.close()
        for s in control:
            s.close()
