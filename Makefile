# Every target does its own set-up; all of them can run again safely.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STACK_DIR := $(or $(SENSORSTREAM_STACK_DIR),.stack)

.PHONY: setup demo test test-tools lint stack stack-down worker simulate load bench bench-load anomaly-eval anomaly-latency clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[stack,dev]'
	touch $@

## The main job on the embedded default: local stack, a worker, the simulator. Ctrl-C stops it.
demo: setup
	$(BIN)/python -m app.demo

## The whole test suite; starts and stops the real services it uses.
test: setup lint test-tools
	$(BIN)/python -m pytest

## promtool (Debian package prometheus) checks /metrics in the tests, and Debian's chromium and
## chromium-driver run the dashboard's browser test; installed when missing, as root.
test-tools:
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     --no-install-recommends prometheus; } \
	  || echo "promtool missing: install the Debian package prometheus (the tests fail without it)"
	@{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     chromium chromium-driver; } \
	  || echo "chromium missing: install the Debian packages chromium and chromium-driver (the dashboard test fails without them)"

## ruff (with SLF001/TID251: Faust's and aiokafka's internals only in stream/) and the
## layering contracts of pyproject.toml (import-linter).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

## Start / stop the local services (broker, PostgreSQL, S3) in the background.
stack: setup
	$(BIN)/python -m app.stack up

stack-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m app.stack down; \
	else echo "stopped: nothing (no stack running)"; fi

## A worker against `make stack` (reads the settings the stack chose).
worker: setup
	set -a && . $(STACK_DIR)/env && set +a && $(BIN)/faust -A app worker -l info

## The simulator against `make stack`; pass options with ARGS="--count 1000 --speed 0".
simulate: setup
	set -a && . $(STACK_DIR)/env && set +a && $(BIN)/sensorstream-simulate $(ARGS)

## Historical backfill against `make stack`: ARGS="FILE... [--format csv --map ...]" (README).
load: setup
	set -a && . $(STACK_DIR)/env && set +a && $(BIN)/faust -A app load $(ARGS)

## Benchmarks (ratios against a baseline measured in the same run).
bench: setup
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.compare $(ARGS)

## Lines/s of `faust -A app load` into the broker, against raw aiokafka, on a stack of its own.
bench-load: setup
	$(BIN)/python -m bench.load $(ARGS)

## Precision, recall and latency of the anomaly detectors per injected class, on a stack of its own.
anomaly-eval: setup
	$(BIN)/python -m bench.anomaly_eval --stack $(ARGS)

## Wall-clock delay from a faulty reading to its event at /anomalies, on a stack of its own.
anomaly-latency: setup
	$(BIN)/python -m bench.anomaly_latency $(ARGS)

clean: stack-down
	rm -rf $(VENV) data .pytest_cache .ruff_cache .hypothesis *.egg-info
