"""keepalive_interval "auto" on the real Envoy, under the fault lab: a NAT that forgets idle flows
after a cutoff the filter is never told (tests/lab/learning.py). Connections die while it
learns; after the first deaths, no more, on either Envoy worker; and commands after idle spells
longer than the cutoff succeed. Through plain Envoy the same idle spell breaks the command (the
fault bites). Needs root, as `make test` has.
"""

from __future__ import annotations

import os
import re

import pytest

from lab import learning
from lab.faults import NatTimeout, RedisTimeout

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fault lab needs root")


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
    # keepalives every 2 s keep the connection alive. Redis timeout: its FIN gives the cutoff
    # at once: one death.
    assert r.deaths, "the fault never bit: the lab is broken"
    assert max(r.deaths) < learning.LEARN_S - 4, f"the connection still died late: {r.deaths}"
    assert len(r.deaths) <= 3, r.deaths
    interval = r.learned.get("keepalive_interval_ms")
    assert interval is not None and interval < r.cutoff_s * 1000, r.learned
    if fault_key == "redis-timeout-2s":
        assert len(r.deaths) == 1, r.deaths
    assert 0 < r.learned.get("idle_cutoff_ms", 0) <= 2 * r.cutoff_s * 1000, r.learned
    assert r.learned.get("idle_deaths") == len(r.deaths), r.learned

    # Six more connections, spread over both workers: none dies. The worker that did not see
    # the deaths took the cutoff from the one that did (proxy-wasm shared data).
    assert r.later_deaths == [], f"connections died after the cutoff was learned: {r.later_deaths}"
    # The kernel spreads connections over the workers (SO_REUSEPORT): when both got some, the
    # one that saw no death must have taken the other's cutoff.
    print("connections per worker:", r.per_worker)
    if sum(1 for v in r.per_worker.values() if v > 0) > 1:
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
