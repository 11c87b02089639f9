"""keepalive_interval "auto" on the real Envoy, under the fault lab: a NAT that forgets idle flows
after a cutoff the filter is never told. Connections die while it learns; after the first
deaths, no more, and commands after idle spells longer than the cutoff succeed. Through plain
Envoy the same idle spell breaks the command (the fault bites). Needs root, as `make test` has.
"""

from __future__ import annotations

import asyncio
import os
import re
import time

import pytest

from lab.faults import NatTimeout

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fault lab needs root")

CUTOFF_S = 3
AUTO = {"keepalive_interval": "auto", "min_keepalive_interval": "500ms",
        "max_keepalive_interval": "8s", "ping_timeout": "1s", "probe_after": "0s"}
LEARN_S = 20.0
SLOTS_AFTER = 6
AFTER_S = 12.0
SET = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
GET = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
UPSTREAM = "redis_idle_guard.upstream.upstream_cluster=.=redis;.;"


async def _idle_slot(address, t0, stop_at, deaths, unexpected):
    """A pooled connection that is used once and then idles; when the filter closes it (the
    reconnect signal) the pool opens a new one."""
    while time.monotonic() < stop_at:
        reader, writer = await asyncio.open_connection(*address)
        try:
            writer.write(SET)
            await writer.drain()
            reply = await asyncio.wait_for(reader.readexactly(5), 3)
            assert reply == b"+OK\r\n", reply
            try:
                data = await asyncio.wait_for(reader.read(1), stop_at - time.monotonic())
            except asyncio.TimeoutError:
                return
            if data:
                unexpected.append(data)
                return
            deaths.append(round(time.monotonic() - t0, 1))
        finally:
            writer.close()


async def _use_after_idle(address, idle_s, timeout_s):
    """Connect, command, idle longer than the cutoff, command: the error, or None."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(SET)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(5), 3) == b"+OK\r\n"
        await asyncio.sleep(idle_s)
        writer.write(GET)
        await writer.drain()
        reply = await asyncio.wait_for(reader.readexactly(7), timeout_s)
        return None if reply == b"$1\r\nv\r\n" else f"unexpected reply {reply!r}"
    except asyncio.TimeoutError:
        return "timeout (no reply)"
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()


def test_learns_a_nat_cutoff_it_is_not_told_and_then_no_connection_dies(lab, wasm):
    """One pooled connection teaches the filter (two Envoy workers, which share what they
    learn); then a pool of six idles through both workers without a death."""
    fault = NatTimeout("drop", cutoff_s=CUTOFF_S)
    with fault:
        guard = lab.envoy(fault.address, wasm=wasm, plugin_config=AUTO, concurrency=2,
                          name="envoy-learning")
        plain = lab.envoy(fault.address, name="envoy-plain")

        async def idle_pool(slots, seconds):
            t0 = time.monotonic()
            deaths, unexpected = [], []
            await asyncio.gather(*(_idle_slot(guard.address, t0, t0 + seconds, deaths, unexpected)
                                   for _ in range(slots)))
            return sorted(deaths), unexpected

        deaths, unexpected = asyncio.run(idle_pool(1, LEARN_S))
        stats = guard.stats(re.escape("wasmcustom." + UPSTREAM))
        short = {k.split(";.;")[-1]: v for k, v in stats.items()}
        print(f"lab cutoff {CUTOFF_S}s (never told to the filter); deaths at {deaths}")
        print("per-upstream stats:", short)
        assert not unexpected, f"the client got bytes it never asked for: {unexpected}"
        # 8 s (the upper bound) and then 4 s are past the 3 s cutoff: two deaths, then keepalives
        # every 2 s keep the connection alive.
        assert deaths, "the fault never bit: the lab is broken"
        assert max(deaths) < LEARN_S - 4, f"the connection still died late: {deaths}"
        assert len(deaths) <= 3, deaths
        learned_interval = short.get("keepalive_interval_ms")
        assert learned_interval is not None and learned_interval < CUTOFF_S * 1000, short
        assert 0 < short.get("idle_cutoff_ms", 0) <= 2 * CUTOFF_S * 1000, short
        assert short.get("idle_deaths") == len(deaths), (short, deaths)

        # Six more connections, spread over both workers: none dies. The worker that did not
        # see the deaths took the cutoff from the one that did (proxy-wasm shared data).
        later, unexpected = asyncio.run(idle_pool(SLOTS_AFTER, AFTER_S))
        print(f"after learning, {SLOTS_AFTER} connections for {AFTER_S:.0f}s: deaths at {later}")
        assert not unexpected, unexpected
        assert later == [], f"connections died after the cutoff was learned: {later}"
        adopted = [ln for ln in guard.log_text().splitlines() if "another worker learned" in ln]
        print("\n".join(adopted[:2]))
        assert adopted, "no worker took the other's cutoff"

        # Learned: idle spells past the cutoff no longer break commands; through plain Envoy
        # they do.
        async def reuse(envoy):
            return await asyncio.gather(*(_use_after_idle(envoy.address, CUTOFF_S + 2.0, 2.5)
                                          for _ in range(4)))
        async def both():
            return await asyncio.gather(reuse(guard), reuse(plain))
        guarded, bare = asyncio.run(both())
        print("after learning, through the filter:", guarded)
        print("plain tcp_proxy:", bare)
        assert guarded == [None] * 4, guarded
        assert all(e is not None for e in bare), f"the fault did not bite plain Envoy: {bare}"

        # Prometheus: the cluster is a label (stats_tags in the bootstrap).
        text = guard.prometheus_text()
        assert re.search(r'^redis_idle_guard_upstream_idle_deaths\{upstream_cluster="redis"\} \d+',
                         text, re.M), [ln for ln in text.splitlines() if "upstream" in ln][:20]
        assert re.search(r'^redis_idle_guard_upstream_keepalive_interval_ms'
                         r'\{upstream_cluster="redis"\} \d+', text, re.M)
