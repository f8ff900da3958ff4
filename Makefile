# Every target sets up what it needs and is idempotent: a second call installs nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tokenlab-installed
PROFILE ?= cpu
JOBS ?= 2

.PHONY: help venv reproduce test test-fast smoke fetch lab export clean-nbs bench browser-deps outputs

help:
	@echo "make reproduce   fetch assets, run every experiment (profile cpu) -> figures/cpu/"
	@echo "make test        unit, property, notebook and smoke-profile experiment tests"
	@echo "make lab         open the notebook collection (and the explorers in nbs/explorers/) in JupyterLab"
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

test: $(STAMP) browser-deps
	$(VENV)/bin/tokenlab fetch --tier all
	$(PY) -m pytest -q -n 2 tests

# The browser test (tests/test_browser.py) drives Debian's chromium through chromium-driver; never a downloaded browser.
# Installs whichever of these packages is missing (apt-get update first: a fresh machine has no package lists);
# fonts-droid-fallback (1.8 MB) gives the screenshots CJK glyphs. Without apt the target fails: no silent skip.
BROWSER_DEBS := chromium chromium-driver fonts-droid-fallback
browser-deps:
	@missing=$$(for p in $(BROWSER_DEBS); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    command -v apt-get >/dev/null || { echo "make test needs Debian's $$missing (apt-get install $$missing)" >&2; exit 1; }; \
	    sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    echo "installing for the browser test: "$$missing; \
	    $$sudo apt-get update -qq && \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || { echo "no /usr/bin/chromium or /usr/bin/chromedriver" >&2; exit 1; }

# JupyterLab 4.6.6 and ipywidgets 8.1.9 are in the pinned dev requirements that $(STAMP) installs.
lab: $(STAMP)
	$(VENV)/bin/tokenlab fetch --tier all
	$(VENV)/bin/jupyter lab nbs/

export: $(STAMP)
	$(VENV)/bin/nbdev_clean && $(VENV)/bin/nbdev_export

outputs: $(STAMP)
	$(VENV)/bin/tokenlab fetch --tier all
	$(VENV)/bin/tokenlab notebooks --execute --jobs $(JOBS)

bench: $(STAMP)
	$(VENV)/bin/tokenlab fetch --tier core
	$(PY) -m bench.run --all
