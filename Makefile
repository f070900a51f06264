# The two commands of the README: `make demo` runs the app, `make test` runs every test.
# Both are idempotent and install what they need into .venv (Python) and web/node_modules (npm).
PYTHON ?= python3
VENV ?= .venv
# On these machines this takes a CPU build from local disk; GPU users pass e.g.
#   make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 5000
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint setup python-deps web-deps browser nginx firefox firefox-test cluster-deps clean

demo: setup
	$(BIN)/python -m backend serve --host $(HOST) --port $(PORT)

test: setup browser lint cluster-deps nginx
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory firefox-test

# ruff (lint + format check, configured in pyproject.toml) for Python; eslint (web/eslint.config.js) for web/.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd web && npm run --silent lint

setup: python-deps web-deps

python-deps: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

web-deps: web/node_modules/.package-lock.json

web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	touch $@

# Debian's chromium for the browser tests (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

# Debian's nginx for the buffering front of the abuse tests (tests/test_abuse.py starts it from a generated
# config on loopback ports; the system service is not used).
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q nginx; }

# The Firefox suite (tests/firefox): Debian's firefox-esr driven over WebDriver BiDi by puppeteer-core (its own
# npm project; no geckodriver, no browser download), node's test runner, the real server on random weights.
firefox:
	@command -v firefox-esr >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q firefox-esr; }

tests/firefox/node_modules/.package-lock.json: tests/firefox/package.json tests/firefox/package-lock.json
	cd tests/firefox && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund
	touch $@

firefox-test: python-deps firefox tests/firefox/node_modules/.package-lock.json
	cd tests/firefox && SAM_PYTHON=$(abspath $(BIN))/python node --test --test-reporter=spec

# The cluster tests' real parts (docs/deploy.md): Debian's redis-server and the .[cluster] extra (Ray, redis-py).
# `make demo` needs neither.
cluster-deps: python-deps
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q redis-server; }
	$(BIN)/python -c "import ray.serve, ray.data, redis" 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[test,cluster]'

clean:
	rm -rf $(VENV) web/node_modules tests/firefox/node_modules
