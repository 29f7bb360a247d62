# The two commands (README): `make demo` runs the main job, `make test` runs the whole suite.
# Each installs what it needs first: a venv with the package, the npm chain tooling, Mosquitto.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NODE_STAMP := contracts/node_modules/.installed-stamp
MOSQUITTO := $(shell command -v mosquitto || ls /usr/sbin/mosquitto 2>/dev/null)
ARGS ?=

.PHONY: demo test lint setup node mosquitto bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Node is optional for the demo (it falls back to an in-process EVM) and required for the tests.
$(NODE_STAMP): contracts/package.json contracts/package-lock.json
	@# Not `npm ci`: npm 11 calls the lock out of sync over anvil's other-platform optional packages;
	@# `npm install` resolves from the same lock and leaves it unchanged.
	npm install --prefix contracts --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

node: $(NODE_STAMP)

mosquitto:
	@if [ -z "$(MOSQUITTO)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q mosquitto; \
	  else echo "Mosquitto is needed: sudo apt-get install mosquitto" >&2; exit 1; fi; fi

demo: $(STAMP)
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory node; \
	  else echo "npm not found: the demo uses the in-process EVM (eth-tester)"; fi
	$(VENV)/bin/depin demo $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: $(STAMP) node mosquitto lint
	node contracts/build.js --check
	$(VENV)/bin/pytest -q -ra

bench: $(STAMP) node mosquitto
	$(PY) bench/ingest.py
