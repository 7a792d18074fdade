# Setup and entry points. Everything runs from .venv; `python` inside dvc.yaml commands resolves to it.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export GX_ANALYTICS_ENABLED := false

.PHONY: setup setup-dev repro test lint bench bench-repro

# requirements.lock pins every package (torch==2.13.0 included: a local CPU build here; an open range
# pulls GBs of CUDA), so the resolver has nothing to search and every machine gets the same versions.
$(VENV)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

repro: setup
	dvc repro

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check stages tests bench

bench: setup
	$(PY) bench/data_stages.py --pages 100000 --kind both

bench-repro: setup
	$(PY) bench/full_repro.py --out bench/full_repro.json
