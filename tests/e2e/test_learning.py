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
from lab.faults import NatTimeout

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fault lab needs root")


def test_learns_a_nat_cutoff_it_is_not_told_and_then_no_connection_dies(lab, wasm):
    """One pooled connection teaches the filter (two Envoy workers, which share what they
    learn); then six more idle through both workers without a death."""
    with NatTimeout("drop", cutoff_s=learning.CUTOFF_S) as fault:
        guard = lab.envoy(fault.address, wasm=wasm, plugin_config=learning.AUTO, concurrency=2,
                          name="envoy-learning")
        plain = lab.envoy(fault.address, name="envoy-plain")
        r = learning.run(guard, plain, print)

    print(f"lab cutoff {r.cutoff_s}s (never told to the filter); deaths at {r.deaths}")
    print("per-upstream stats:", r.learned)
    print("after learning: deaths", r.later_deaths, "; through the filter", r.guarded_reuse,
          "; plain", r.plain_reuse)
    assert not r.unexpected, f"the client got bytes it never asked for: {r.unexpected}"
    # 8 s (the upper bound) and then 4 s are past the 3 s cutoff: two deaths, then keepalives
    # every 2 s keep the connection alive.
    assert r.deaths, "the fault never bit: the lab is broken"
    assert max(r.deaths) < learning.LEARN_S - 4, f"the connection still died late: {r.deaths}"
    assert len(r.deaths) <= 3, r.deaths
    interval = r.learned.get("keepalive_interval_ms")
    assert interval is not None and interval < r.cutoff_s * 1000, r.learned
    assert 0 < r.learned.get("idle_cutoff_ms", 0) <= 2 * r.cutoff_s * 1000, r.learned
    assert r.learned.get("idle_deaths") == len(r.deaths), r.learned

    # Six more connections, spread over both workers: none dies. The worker that did not see
    # the deaths took the cutoff from the one that did (proxy-wasm shared data).
    assert r.later_deaths == [], f"connections died after the cutoff was learned: {r.later_deaths}"
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
