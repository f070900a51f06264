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

.PHONY: demo test lint setup python-deps web-deps system-deps browser nginx firefox firefox-test webkit webkit-test cluster-deps tool-venvs clean

demo: setup
	$(BIN)/python -m backend serve --host $(HOST) --port $(PORT)

test: setup browser lint cluster-deps nginx tool-venvs
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory firefox-test
	$(MAKE) --no-print-directory webkit-test

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
	$(BIN)/python -m pip install --quiet -e '.[test,text,integrations]'
	touch $@

web-deps: web/node_modules/.package-lock.json

web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	touch $@

# The Debian packages the tests drive, installed in one apt-get run when any is missing: chromium (the browser
# tests; Playwright's own browser download is not used), firefox-esr (the Firefox suite), webkit2gtk-driver and
# xvfb (the WebKit suite: WebKitGTK's WebDriver and the X display it needs), nginx (the buffering
# front of the abuse tests, started from a generated config on loopback ports), redis-server (the cluster
# tests). The system services are never used: each test starts its own instance. `make demo` needs none.
SYSTEM_TOOLS := chromium:chromium firefox-esr:firefox-esr WebKitWebDriver:webkit2gtk-driver Xvfb:xvfb nginx:nginx \
  redis-server:redis-server
system-deps:
	@missing=; for pair in $(SYSTEM_TOOLS); do tool=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$tool >/dev/null 2>&1 || test -x /usr/sbin/$$tool || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "installing Debian packages:$$missing"; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; fi

browser nginx firefox webkit: system-deps

# The Firefox suite (tests/firefox): Debian's firefox-esr driven over WebDriver BiDi by puppeteer-core (its own
# npm project; no geckodriver, no browser download), node's test runner, the real server on random weights.
tests/firefox/node_modules/.package-lock.json: tests/firefox/package.json tests/firefox/package-lock.json
	cd tests/firefox && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund
	touch $@

firefox-test: python-deps firefox tests/firefox/node_modules/.package-lock.json
	cd tests/firefox && SAM_PYTHON=$(abspath $(BIN))/python node --test --test-reporter=spec

# The WebKit suite (tests/webkit, docs/webkit.md): Debian's WebKitGTK, Safari's engine, over its WebKitWebDriver
# (selenium, from the .[test] extra) on a private Xvfb, the real server on random weights.
webkit-test: python-deps webkit
	$(BIN)/python -m pytest tests/webkit

# The cluster tests' real parts (docs/deploy.md): Debian's redis-server and the .[cluster] extra (Ray, redis-py).
# `make demo` needs neither.
cluster-deps: python-deps system-deps
	$(BIN)/python -c "import ray.serve, ray.data, redis" 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[test,text,integrations,cluster]'

# The annotation tools the integration tests drive (tests/tool_servers.py), each in its own virtualenv: Label
# Studio pins Django and dozens of packages, and inference-sdk pins numpy < 2.3 (through opencv), which would
# clash with the app's. Label Studio's database is migrated once into a template here (minutes on two cores),
# so each test run starts from a copy in well under a minute. `make demo` needs none of this.
LABEL_STUDIO_SPEC ?= label-studio==1.23.2
INFERENCE_SDK_SPEC ?= inference-sdk==1.8.3
tool-venvs: .venv-label-studio/template-data/label_studio.sqlite3 .venv-inference-sdk/.installed

.venv-label-studio/.installed:
	test -x .venv-label-studio/bin/python || $(PYTHON) -m venv .venv-label-studio
	.venv-label-studio/bin/python -m pip install --quiet $(LABEL_STUDIO_SPEC)
	touch $@

.venv-label-studio/template-data/label_studio.sqlite3: .venv-label-studio/.installed $(VENV)/.installed
	$(BIN)/python tests/tool_servers.py template

.venv-inference-sdk/.installed:
	test -x .venv-inference-sdk/bin/python || $(PYTHON) -m venv .venv-inference-sdk
	.venv-inference-sdk/bin/python -m pip install --quiet $(INFERENCE_SDK_SPEC)
	touch $@

clean:
	rm -rf $(VENV) .venv-label-studio .venv-inference-sdk web/node_modules tests/firefox/node_modules
