"""keepalive_interval "auto" on the real Envoy, under the fault lab: a NAT that forgets idle flows
after a cutoff the filter is never told (tests/lab/learning.py). Connections die while it
learns; after the first deaths, no more, on either Envoy worker; and commands after idle spells
longer than the cutoff succeed. Through plain Envoy the same idle spell breaks the command (the
fault bites). Needs root, as `make test` has.
"""

from __future__ import annotations

import asyncio
import time
import re

import pytest

from lab import learning
from lab.faults import NatTimeout, Outage, RedisTimeout

pytestmark = pytest.mark.needs_root


@pytest.mark.parametrize("fault_key", ["nat-drop-3s", "redis-timeout-2s"])
def test_learns_a_cutoff_it_is_not_told_and_then_no_connection_dies(lab, module, fault_key):
    """One pooled connection teaches the filter (two Envoy workers, which share what they
    learn); then six more idle through both workers without a death. A NAT's silent drop is
    seen by unanswered PINGs; Redis `timeout` (it closes between 2 and 3 s) by its FIN."""
    fault = (NatTimeout("drop", cutoff_s=learning.CUTOFF_S) if fault_key == "nat-drop-3s"
             else RedisTimeout(cutoff_s=2))
    with fault:
        guard = lab.envoy(fault.address, module=module, plugin_config=learning.AUTO, concurrency=2,
                          name="envoy-learning")
        plain = lab.envoy(fault.address, name="envoy-plain")
        # RedisTimeout.cutoff_s is the worst case (timeout + 1 s of Redis's whole-second check).
        r = learning.run(guard, plain, print, cutoff_s=fault.cutoff_s)

    print(f"lab cutoff {r.cutoff_s}s (never told to the filter); deaths at {r.deaths}")
    print("per-upstream stats:", r.learned)
    print("after learning: deaths", r.later_deaths, "; through the filter", r.guarded_reuse,
          "; plain", r.plain_reuse)
    assert not r.unexpected, f"the client got bytes it never asked for: {r.unexpected}"
    # NAT: 8 s (the upper bound) and then 4 s are past the 3 s cutoff: two deaths, then
    # keepalives every 2 s keep the connection alive. Redis timeout: its FIN comes long before
    # a keepalive was due, so one such death only halves the interval (an odd death could be
    # an event), and the second puts it under the cutoff: two deaths.
    assert r.deaths, "the fault never bit: the lab is broken"
    assert max(r.deaths) < learning.LEARN_S - 4, f"the connection still died late: {r.deaths}"
    assert len(r.deaths) <= 3, r.deaths
    interval = r.learned.get("keepalive_interval_ms")
    assert interval is not None and interval < r.cutoff_s * 1000, r.learned
    if fault_key == "redis-timeout-2s":
        assert len(r.deaths) <= 2, r.deaths
    assert 0 < r.learned.get("idle_cutoff_ms", 0) <= 2 * r.cutoff_s * 1000, r.learned
    assert r.learned.get("idle_deaths") == len(r.deaths), r.learned

    # Six more connections, spread over both workers: none dies. The worker that did not see
    # the deaths took the cutoff from the one that did (proxy-wasm shared data).
    assert r.later_deaths == [], f"connections died after the cutoff was learned: {r.later_deaths}"
    # The kernel spreads connections over the workers (SO_REUSEPORT): when both got some, each
    # either saw a death itself (the pool's reconnects can land on either) or took the other's
    # cutoff.
    print("connections per worker:", r.per_worker, "; learned from deaths on", r.learned_on)
    if sum(1 for v in r.per_worker.values() if v > 0) > 1 and len(r.learned_on) < 2:
        assert r.adopted_log, "no worker took the other's cutoff"

    # Learned: an idle spell past the cutoff no longer breaks a command; through plain Envoy it
    # does.
    assert r.guarded_reuse == [None] * 4, r.guarded_reuse
    assert all(e is not None for e in r.plain_reuse), \
        f"the fault did not bite plain Envoy: {r.plain_reuse}"

    # Prometheus: the cluster is a label (stats_tags in the bootstrap).
    text = "\n".join(r.prometheus)
    assert re.search(r'^redis_idle_guard_upstream_idle_deaths\{upstream_cluster="redis"\} \d+',
                     text, re.M), r.prometheus
    assert re.search(r'^redis_idle_guard_upstream_keepalive_interval_ms'
                     r'\{upstream_cluster="redis"\} \d+', text, re.M), r.prometheus


# -- events teach nothing; a wrong estimate recovers --------------------------------------------

EVENT_AUTO = dict(learning.AUTO)


async def _slot(address, t0: float, stop_at: float, deaths, unexpected) -> None:
    """A pooled connection: used once, then idle until closed, then reopened; a connection that
    cannot be used (Redis restarting, the path down) is retried, as a pool does."""
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(*address)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        try:
            try:
                writer.write(learning.SET)
                await writer.drain()
                reply = await asyncio.wait_for(reader.readexactly(5), 3)
            except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                await asyncio.sleep(0.2)
                continue
            if reply != b"+OK\r\n":
                unexpected.append(reply)
                return
            try:
                data = await asyncio.wait_for(reader.read(1), stop_at - time.monotonic())
            except asyncio.TimeoutError:
                return
            except ConnectionError:
                data = b""
            if data:
                unexpected.append(data)
                return
            deaths.append(round(time.monotonic() - t0, 1))
        finally:
            writer.close()


async def _pool(address, slots: int, spread_s: float, stop_at: float, deaths, unexpected):
    """`slots` pooled connections, each used once (one after the other over `spread_s`) and
    then idle; a closed one is reopened."""
    t0 = time.monotonic()

    async def slot(i):
        await asyncio.sleep(spread_s * i / max(1, slots - 1))
        await _slot(address, t0, stop_at, deaths, unexpected)

    await asyncio.gather(*(slot(i) for i in range(slots)))


def test_a_redis_restart_teaches_nothing(lab, module):
    """Twenty pooled connections last used 0 to 7.5 s apart (idle ages spread over the whole
    range below the 8 s maximum), over two workers, and one Redis restart: every connection
    dies at the same moment whatever its idle age. That is an event: counted, not learned."""
    redis = lab.redis()
    guard = lab.envoy(redis, module=module, plugin_config=EVENT_AUTO, concurrency=2)
    deaths, unexpected = [], []

    async def scenario():
        stop_at = time.monotonic() + 14.0
        pool = asyncio.create_task(_pool(guard.address, 20, 7.5, stop_at, deaths, unexpected))
        await asyncio.sleep(8.0)
        await asyncio.get_running_loop().run_in_executor(None, redis.restart)
        await pool

    asyncio.run(scenario())
    assert not unexpected, unexpected
    assert len(deaths) >= 20, f"the restart closed {len(deaths)} connections"
    up = guard.upstream_stats("redis")
    print("after the restart:", up)
    assert up.get("idle_events", 0) >= 18, up
    assert up.get("keepalive_interval_ms") == 8_000, up
    assert up.get("idle_cutoff_ms") == 0, up


def test_an_outage_steps_down_and_recovery_brings_the_interval_back(lab, module):
    """Four idle pooled connections, a 10 s outage of the whole path (every packet dropped),
    then a healthy path: the outage's deaths look like a cutoff at the interval in use, and the
    interval steps down; ten maximum intervals (80 s) later a canary idles past the estimate,
    survives, and the interval goes back to the maximum. No connection dies after the outage."""
    with Outage() as fault:
        guard = lab.envoy(fault.address, module=module, plugin_config=EVENT_AUTO,
                          name="envoy-outage")
        deaths, unexpected, samples = [], [], []

        async def scenario():
            start = time.monotonic()
            stop_at = start + 135.0
            pool = asyncio.create_task(_pool(guard.address, 4, 0.5, stop_at, deaths, unexpected))
            loop = asyncio.get_running_loop()
            await asyncio.sleep(9.0)
            await loop.run_in_executor(None, fault.arm)
            await asyncio.sleep(10.0)
            await loop.run_in_executor(None, fault.disarm)
            outage_end = time.monotonic() - start
            while time.monotonic() < stop_at:
                up = await loop.run_in_executor(None, guard.upstream_stats, "redis")
                samples.append((round(time.monotonic() - start, 1),
                                up.get("keepalive_interval_ms")))
                await asyncio.sleep(1.0)
            await pool
            return outage_end

        outage_end = asyncio.run(scenario())
    print("deaths at", deaths, "; interval over time", samples[::5])
    assert not unexpected, unexpected
    lowest = min(v for _, v in samples if v is not None)
    assert lowest < 8_000, f"the outage taught nothing: {samples}"
    back = [t for t, v in samples if v == 8_000 and t > outage_end + 5]
    assert back, f"the interval never came back: {samples}"
    print(f"outage ended at {outage_end:.1f} s; interval back to 8 s at {back[0]:.1f} s")
    assert back[0] - outage_end <= 110, samples
    late = [t for t in deaths if t > outage_end + 3]
    assert not late, f"connections died after the outage: {late}"
