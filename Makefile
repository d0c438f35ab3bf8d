# Two commands on a fresh machine: `make run` (the pipeline on the embedded default) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed

export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PATH := $(BIN):$(PATH)

.PHONY: run test install assets repro clean-venv

run: assets  ## venv, install, offline assets, then `dvc repro` (a no-op when nothing changed)
	dvc repro

test: assets  ## venv, install, offline assets, then the whole test suite (slow tests included)
	pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

assets: $(STAMP)  ## fetch + verify photos and weights into $$E2GAN_CACHE (default ~/.cache/e2gan)
	e2gan assets fetch

repro: $(STAMP)
	dvc repro

clean-venv:
	rm -rf $(VENV)
