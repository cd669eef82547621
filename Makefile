# kvsnb: the two commands. `make demo` and `make test` set everything up on a fresh machine
# (Python 3.11, root): system packages only if missing, a virtual environment in .venv, the
# package with its dev extras; then they run.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kvsnb-installed
SYSTEM_STAMP := $(VENV)/.kvsnb-system
BROWSER_STAMP := $(VENV)/.kvsnb-browser
NODE_STAMP := $(VENV)/.kvsnb-node

# hls.js and dash.js for the Player widget: fetched from the npm registry, never committed
VENDOR_DIR := kvsnb/widgets/static/vendor
VENDOR := $(VENDOR_DIR)/hls.min.mjs $(VENDOR_DIR)/dash.all.min.mjs

.PHONY: demo test lint typecheck unit setup system clean bench soak notebooks browser-js vendor dist docs

setup: $(STAMP) $(VENDOR)

vendor: $(VENDOR)

system: $(SYSTEM_STAMP)

# System packages, installed only when missing: ffmpeg (ffprobe checks what Local KVS
# serves) and coturn (Local KVS's TURN server: sessions go through TURN, as on AWS) for
# everything, and for the tests Debian's chromium (the browser tests drive it with
# Playwright; no browser download) and nodejs/npm (the browser tests' JS comes from the npm
# registry).
define apt_install_missing
	@missing=""; for pc in $(1); do \
		pkg=$${pc%%:*}; cmd=$${pc##*:}; \
		command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (apt-get)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mkdir -p $(VENV) && touch $@
endef

$(SYSTEM_STAMP):
	$(call apt_install_missing,ffmpeg:ffprobe coturn:turnserver)

$(BROWSER_STAMP):
	$(call apt_install_missing,chromium:chromium)

$(NODE_STAMP):
	$(call apt_install_missing,nodejs:node npm:npm)

# The browser tests' JS (the KVS WebRTC JS SDK, the AWS SDK v3 clients bundled by esbuild),
# from the npm registry into tests/browser/web/ (git-ignored); again only when
# tests/browser/web/package.json changed.
browser-js: setup $(NODE_STAMP)
	$(PY) -m tests.browser.webjs

# The Player's browser libraries (hls.js, dash.js), with `npm pack`, into the package's
# ignored vendor folder.
$(VENDOR) &: kvsnb/widgets/vendor.py $(STAMP) $(NODE_STAMP)
	$(PY) -m kvsnb.widgets.vendor
	@touch $(VENDOR)

$(STAMP): pyproject.toml $(SYSTEM_STAMP)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: setup
	$(VENV)/bin/kvsnb demo --out demo-output

LINTED := kvsnb tests bench notebooks/build.py notebooks/conftest.py notebooks/src build_hooks docs/conf.py docs/_ext
lint: setup
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest -q tests/unit

# The whole suite: lint, types, then unit, integration, reliability, browser (JupyterLab, and
# the KVS JS SDK against Local KVS in TLS mode) and Binder tests and the notebooks (nbval).
# Pytest's exit 5 (no test ran) counts as a failure. It stops after 25 failures: a cascade
# (a server that no longer starts) ends in minutes, with its errors printed, not in CI's time
# limit with none.
# LOAD=N runs N CPU-bound busy processes for the run's duration (the suite must hold on a
# busy machine); TESTS=... narrows the run to some test paths or node ids.
NBVAL := --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg
LOAD ?= 0
TESTS ?= tests notebooks
test: setup $(BROWSER_STAMP) browser-js lint typecheck
	@busy=""; for i in $$(seq 1 $(LOAD)); do \
		$(PY) -c "while True: pass" & busy="$$busy $$!"; \
	done; \
	trap 'if [ -n "$$busy" ]; then kill $$busy 2>/dev/null; fi' EXIT INT TERM; \
	if [ -n "$$busy" ]; then echo "LOAD=$(LOAD): busy processes$$busy"; fi; \
	$(VENV)/bin/pytest -q -p no:cacheprovider --maxfail=25 --durations=30 $(TESTS) $(NBVAL); rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "pytest ran no test"; exit 1; fi; exit $$rc

# The wheel and the sdist, into dist/ (python -m build). The build fetches hls.js and dash.js
# from the npm registry itself (build_hooks/kvsnb_build.py) and packs them, with their
# licences: `pip install dist/kvsnb-*.whl` needs no Node.js.
dist: setup $(NODE_STAMP)
	rm -f dist/kvsnb-*
	$(PY) -m build --outdir dist .

# The documentation site, docs/_build/html/index.html: Sphinx, warnings as errors, every
# internal reference checked (-n); the notebooks are shown with their stored outputs.
docs: setup
	$(VENV)/bin/sphinx-build -E -W --keep-going -n -q -b html docs docs/_build/html
	@echo "docs/_build/html/index.html"

# Rebuild the notebooks from notebooks/src and store their outputs.
notebooks: setup
	$(PY) notebooks/build.py

bench: setup $(BROWSER_STAMP)
	$(PY) -m bench

# A long run: 4 masters and 2 viewers, memory and loss over time (SOAK_MINUTES=60 default;
# SOAK_WORKERS=2 puts Local KVS's storage sessions in 2 worker processes).
SOAK_MINUTES ?= 60
SOAK_WORKERS ?= 0
soak: setup
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES) --workers $(SOAK_WORKERS)

clean:
	rm -rf $(VENV) demo-output .mypy_cache .ruff_cache .pytest_cache $(VENDOR_DIR) dist build \
		docs/_build docs/jupyter_execute docs/tutorials/*.ipynb
