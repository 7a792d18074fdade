# Setup and entry points. Everything runs from .venv; `python` inside dvc.yaml commands resolves to it.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export GX_ANALYTICS_ENABLED := false

.PHONY: setup setup-dev repro test lint bench

# torch is pinned and installed first: 2.13.0 is a local CPU build here; an open range pulls GBs of CUDA.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
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
