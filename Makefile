# Every target sets up what it needs and is idempotent: a second call installs nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tokenlab-installed
PROFILE ?= cpu
JOBS ?= 2

.PHONY: help venv reproduce test test-fast smoke fetch lab export clean-nbs bench outputs

help:
	@echo "make reproduce   fetch assets, run every experiment (profile cpu) -> figures/cpu/"
	@echo "make test        unit, property, notebook and smoke-profile experiment tests"
	@echo "make lab         open the notebook collection in JupyterLab"
	@echo "make export      nbdev_clean + nbdev_export after editing nbs/"
	@echo "make outputs     execute the library notebooks in nbs/ and keep their outputs (scrubbed)"
	@echo "make bench       run the benchmarks in bench/"

venv: $(STAMP)

$(STAMP): settings.ini setup.py constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0" -c constraints.txt
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]" -c constraints.txt
	@touch $(STAMP)

fetch: $(STAMP)
	$(VENV)/bin/tokenlab fetch --tier core

reproduce: $(STAMP)
	$(VENV)/bin/tokenlab fetch --tier all
	$(VENV)/bin/tokenlab run --profile $(PROFILE) --jobs $(JOBS) --resume

test: $(STAMP)
	$(VENV)/bin/tokenlab fetch --tier all
	$(PY) -m pytest -q -n 2 tests

lab: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check "jupyterlab==4.6.6" -c constraints.txt
	$(VENV)/bin/jupyter lab nbs/

export: $(STAMP)
	$(VENV)/bin/nbdev_clean && $(VENV)/bin/nbdev_export

outputs: $(STAMP)
	$(VENV)/bin/tokenlab fetch --tier all
	$(VENV)/bin/tokenlab notebooks --execute --jobs $(JOBS)

bench: $(STAMP)
	$(VENV)/bin/tokenlab fetch --tier core
	$(PY) -m bench.run --all
