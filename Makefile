# Two commands on a fresh machine: `make run` (the pipeline on the embedded default) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed

export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export ORT_DISABLE_TELEMETRY := 1
export PATH := $(BIN):$(PATH)

DEMO_STAMP := demo/node_modules/.installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: run test lint install assets repro demo demo-deps system-deps clean-venv

run: assets  ## venv, install, offline assets, then `dvc repro` (a no-op when nothing changed)
	dvc repro

test: assets demo-deps system-deps lint  ## venv, install, offline assets, demo packages, chromium + strace, lint, then every test
	E2GAN_REQUIRE_STRACE=1 pytest -q -n 2 --dist loadfile --durations=15

lint: $(STAMP)  ## ruff (lint and format check), configured in pyproject.toml
	ruff check .
	ruff format --check .

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-litert.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	@# the LiteRT converter without dependency resolution: why, in requirements-litert.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-litert.txt
	touch $(STAMP)

assets: $(STAMP)  ## fetch + verify photos and weights into $$E2GAN_CACHE (default ~/.cache/e2gan)
	e2gan assets fetch

repro: $(STAMP)
	dvc repro

demo: assets demo-deps  ## the browser demo on http://127.0.0.1:8765/ (after `make run`)
	e2gan demo

demo-deps: $(DEMO_STAMP)  ## the demo's pinned front-end packages (npm registry, package-lock.json)

$(DEMO_STAMP): demo/package.json demo/package-lock.json
	cd demo && npm ci --no-audit --no-fund --loglevel=error
	touch $(DEMO_STAMP)

system-deps:  ## Debian's chromium (browser tests) and strace (the no-egress test); skipped when both are there
	command -v chromium >/dev/null && command -v strace >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium strace; }

clean-venv:
	rm -rf $(VENV)
