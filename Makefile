# Checkout Saga — common commands. Everything runs from a local virtualenv (.venv).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install chromium demo api test soak test-fast lint schemas bench worker-order worker-inventory worker-payment worker-shipping up flower metrics clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install requirements.txt

# tests/browser drive Debian's Chromium at /usr/bin/chromium through Playwright; nothing
# downloads a browser (never `playwright install`). .ci/run installs it the same way.
chromium:  ## install Debian's Chromium for tests/browser (as root; a no-op when it is there)
	@command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

demo: $(STAMP)  ## run the embedded demo: every test input through the saga, then the auditor
	$(BIN)/python -m app demo

api: $(STAMP)  ## serve the HTTP API on 127.0.0.1:8000 (embedded unless CHECKOUT_BROKER_URL is set)
	$(BIN)/python -m app api

test: $(STAMP)  ## the whole suite (needs PostgreSQL, Redis and RabbitMQ on 127.0.0.1, and make chromium)
	$(BIN)/python -m pytest

soak: $(STAMP)  ## the fault and overload runs for SOAK_SECONDS each (default 600) instead of a few seconds
	SOAK_SECONDS=$${SOAK_SECONDS:-600} $(BIN)/python -m pytest tests/brokers/test_faults.py tests/brokers/test_overload.py tests/brokers/test_rabbitmq_cluster.py

test-fast: $(STAMP)  ## unit and in-process integration tests only (no servers needed)
	$(BIN)/python -m pytest -m "not brokers"

lint: $(STAMP)  ## architecture contracts (import-linter) and the message contracts (python -m app schemas check)
	$(BIN)/lint-imports
	$(BIN)/python -m app schemas check

schemas: $(STAMP)  ## write the message contracts (JSON Schemas) under contracts/ from the code
	$(BIN)/python -m app schemas export

bench: $(STAMP)  ## measure sagas/sec of both saga modes against a raw-Celery baseline (writes bench/REPORT.md)
	$(BIN)/python -m bench.run

worker-%: $(STAMP)  ## run one service's worker, e.g. make worker-payment
	$(BIN)/celery -A workers.$* worker -Q $* -n $*@%h --loglevel=INFO

# `make up` runs these processes of the Procfile: every service worker, the sales analytics
# worker while CHECKOUT_EXTENSIONS names analytics, beat, the outbox relay and the HTTP API
# (127.0.0.1:8000, or the port API_PORT names); Flower too once
# CHECKOUT_FLOWER_USER and CHECKOUT_FLOWER_PASSWORD are set; the metrics exporter with METRICS=1.
comma := ,
UP_PROCESSES = order inventory payment shipping \
	$(if $(filter analytics,$(subst =, ,$(subst $(comma), ,$(CHECKOUT_EXTENSIONS)))),analytics) beat relay api \
	$(if $(and $(CHECKOUT_FLOWER_USER),$(CHECKOUT_FLOWER_PASSWORD)),flower) $(if $(filter 1 yes true,$(METRICS)),metrics)

up: $(STAMP)  ## run every worker, beat, the relay and the HTTP API as separate processes (needs CHECKOUT_BROKER_URL, _DATABASE_URL)
	@case "$${CHECKOUT_BROKER_URL:-memory://}" in memory://*) \
	  echo "make up: set CHECKOUT_BROKER_URL to the Redis or RabbitMQ to use, e.g. redis://127.0.0.1:6379/0 -" \
	    "the embedded memory:// broker lives inside one process, so separate processes cannot share it" \
	    "(make demo runs embedded)" >&2; exit 2;; esac
	@[ -n "$$CHECKOUT_DATABASE_URL" ] || { echo "make up: set CHECKOUT_DATABASE_URL, e.g." \
	  "postgresql+psycopg://postgres@127.0.0.1/checkout (every process must use the same database)" >&2; exit 2; }
	@$(BIN)/python -m app settings >/dev/null
	@PATH="$(CURDIR)/$(BIN):$$PATH" exec $(BIN)/honcho start --env /dev/null --procfile Procfile $(UP_PROCESSES)

flower: $(STAMP)  ## run Flower on the configured broker (basic auth: CHECKOUT_FLOWER_USER, _PASSWORD)
	$(BIN)/python -m app.operations.flower

metrics: $(STAMP)  ## serve saga metrics for Prometheus on 127.0.0.1:9808 (python -m app metrics)
	$(BIN)/python -m app metrics

clean:  ## remove the virtualenv and local data
	rm -rf $(VENV) var
