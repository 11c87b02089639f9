"""Fixtures for the end-to-end suite: real Envoy 1.40 + real redis-server + redis-py, loopback.

`lab` starts processes for one test and stops them afterwards (also on failure, when it prints
the tail of each Envoy log). `module` is a built filter, and every test that takes it runs once
per build: `[wasm]` (the proxy-wasm module) and `[native]` (the Envoy dynamic module);
`wasm_module` and `native_module` are one build each, for tests of one build's own files. Tests
FAIL (not skip) when a build is missing, because `make test-e2e` builds both first.

`@pytest.mark.needs_root` marks a test of the fault lab (network namespaces, iptables): it skips
for a developer who is not root, but under CI (`CI` set) or `make test-e2e` (LAB_NO_SKIP=1) it
fails, and so does any other skip there, so a green run is never one that quietly ran less.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from lab import (EnvoyProxy, FilterModule, RedisServer, default_native_path,  # noqa: E402
                 default_wasm_path, live_processes, stop_all)


def no_skips() -> bool:
    """Under CI or `make test-e2e` a test that cannot run is a failure, not a skip."""
    ci = os.environ.get("CI", "").strip().lower()
    return os.environ.get("LAB_NO_SKIP") == "1" or ci not in ("", "0", "false", "no")


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_root: the fault lab (network namespaces, iptables); "
                            "skips when not root, fails instead under CI or make test-e2e")


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_root") and os.geteuid() != 0:
        pytest.skip("the fault lab needs root (network namespaces, iptables)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and not hasattr(rep, "wasxfail") and no_skips():
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = (f"would skip ({reason.removeprefix('Skipped: ')}), and a skip fails under "
                        f"CI (CI={os.environ.get('CI', '')!r}) and `make test-e2e` (LAB_NO_SKIP=1)")
    setattr(item, f"rep_{rep.when}", rep)


def pytest_sessionfinish(session, exitstatus):
    leftovers = live_processes()
    stop_all()
    if leftovers:
        print(f"\nlab: stopped processes left running at session end: {leftovers}")


def _build(path: Path, make: str) -> FilterModule:
    if not path.exists():
        pytest.fail(f"the filter module {path} does not exist: run `make {make}` "
                    "(make test-e2e does it)", pytrace=False)
    return FilterModule(path)


@pytest.fixture(scope="session")
def wasm_module() -> FilterModule:
    return _build(default_wasm_path(), "build")


@pytest.fixture(scope="session")
def native_module() -> FilterModule:
    return _build(default_native_path(), "build-native")


@pytest.fixture(scope="session", params=["wasm", "native"])
def module(request) -> FilterModule:
    return request.getfixturevalue(f"{request.param}_module")


# Log lines that mean the filter failed (a Wasm VM crash or trap, a native callback that
# panicked): never acceptable in a passing test.
VM_FAILURE = re.compile(r"panicked|Uncaught RuntimeError|Wasm VM failed|wasm trap|"
                        r"Function: proxy_on_\w+ failed|failed to load", re.IGNORECASE)

# Envoy's startup inventory (extension lists, header maps) and deprecation notices.
NOISE = re.compile(r"source/server/server\.cc|Deprecated field|runtime: \{|statically linked")


class Lab:
    """Starts lab processes for one test and always stops them."""

    def __init__(self, stack: contextlib.ExitStack):
        self._stack = stack
        self.envoys: list[EnvoyProxy] = []
        self.redises: list[RedisServer] = []

    def redis(self, **kwargs) -> RedisServer:
        r = self._stack.enter_context(RedisServer(**kwargs))
        self.redises.append(r)
        return r

    def envoy(self, upstream, **kwargs) -> EnvoyProxy:
        e = EnvoyProxy(upstream, **kwargs)
        self.envoys.append(e)
        return self._stack.enter_context(e)

    def vm_failures(self) -> list[str]:
        bad = []
        for e in self.envoys:
            if e.with_filter:
                bad += [f"{e.name}: {line}" for line in e.log_text().splitlines()
                        if VM_FAILURE.search(line)]
        return bad

    def dump_logs(self, lines: int = 60) -> None:
        for e in self.envoys:
            useful = [ln for ln in e.log_text().splitlines() if not NOISE.search(ln)]
            tail = "\n".join(useful[-lines:])
            print(f"\n----- {e!r} log tail ({e.workdir}) -----\n{tail}")
        for r in self.redises:
            tail = "\n".join(ln for ln in r.log_text().splitlines()[-8:] if "overcommit" not in ln)
            print(f"\n----- {r!r} log tail -----\n{tail}")


@pytest.fixture
def lab(request):
    with contextlib.ExitStack() as stack:
        the_lab = Lab(stack)
        try:
            yield the_lab
        finally:
            rep = getattr(request.node, "rep_call", None)
            if rep is not None and rep.failed:
                the_lab.dump_logs()
            failures = the_lab.vm_failures()
            if failures and rep is not None and rep.passed:
                pytest.fail("the filter's VM failed during the test:\n" + "\n".join(failures[:20]),
                            pytrace=False)
