# Checkout Saga — common commands. Everything runs from a local virtualenv (.venv).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install demo test test-fast lint bench worker-order worker-inventory worker-payment worker-shipping flower metrics clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install requirements.txt

demo: $(STAMP)  ## run the embedded demo: every test input through the saga, then the auditor
	$(BIN)/python -m app demo

test: $(STAMP)  ## the whole suite (needs PostgreSQL, Redis and RabbitMQ on 127.0.0.1)
	$(BIN)/python -m pytest

test-fast: $(STAMP)  ## unit and in-process integration tests only (no servers needed)
	$(BIN)/python -m pytest -m "not brokers"

lint: $(STAMP)  ## architecture contracts (import-linter)
	$(BIN)/lint-imports

bench: $(STAMP)  ## measure sagas/sec against a raw-Celery baseline (writes bench/REPORT.md)
	$(BIN)/python -m bench.run

worker-%: $(STAMP)  ## run one service's worker, e.g. make worker-payment
	$(BIN)/celery -A workers.$* worker -Q $* -n $*@%h --loglevel=INFO

flower: $(STAMP)  ## run Flower on the configured broker (basic auth: CHECKOUT_FLOWER_USER, _PASSWORD)
	$(BIN)/python -m app.flower

metrics: $(STAMP)  ## serve saga metrics for Prometheus on 127.0.0.1:9808 (python -m app metrics)
	$(BIN)/python -m app metrics

clean:  ## remove the virtualenv and local data
	rm -rf $(VENV) var
