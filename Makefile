# The two commands: `make serve` and `make test`. Both run `setup` first, which
# installs only what is missing and is a no-op the second time.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CHASER := $(VENV)/bin/chaser
APT_PACKAGES := qemu-system-x86 qemu-utils busybox-static e2fsprogs erofs-utils mmdebstrap \
	kmod xz-utils zstd cpio skopeo umoci docker-registry apache2-utils tmux python3-venv \
	ca-certificates curl jq nftables dnsmasq-base iproute2 passwd chromium \
	postgresql systemd
PYTEST_ARGS ?=

.PHONY: setup guest console serve lint test unit bench test-e2b-drift test-e2b-js

setup: .stamps/apt $(VENV)/.installed console guest build/e2b-js/.installed

.stamps/apt: Makefile
	@mkdir -p .stamps
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml .stamps/apt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	@touch $@

# Cached by content hash inside chaser itself: fast when nothing changed.
guest: $(VENV)/.installed
	$(CHASER) guest build --template
	$(CHASER) images pull chaser/base

# The web console's xterm.js, vendored from npm (committed): npm runs only when console/package*.json
# or console/vendor.py changed (their hash is in chaser/console/static/vendor/SOURCES.sha256). docs/console.md
console:
	@python3 console/vendor.py

serve: setup
	$(CHASER) server

# Style and bugs (ruff), types (mypy; strict for service, vm, api, client, runtime) and the
# architecture (import-linter's contracts): all configured in pyproject.toml, a few seconds.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check chaser tests bench
	$(VENV)/bin/mypy chaser
	$(VENV)/bin/lint-imports

test: setup lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: lint
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

# The E2B SDK tests (tests/integration/test_e2b.py) against the newest `e2b` on PyPI instead of the
# pinned one (a copy under build/ that shadows it): reports what drifted, never fails (docs/e2b.md).
test-e2b-drift: setup
	@rm -rf build/e2b-newest && $(VENV)/bin/pip install -q --upgrade --target build/e2b-newest e2b
	@echo "e2b pinned $$($(PY) -c 'from e2b.api.metadata import package_version as v; print(v)')," \
		"newest $$(PYTHONPATH=build/e2b-newest $(PY) -c 'from e2b.api.metadata import package_version as v; print(v)')"
	@PYTHONPATH=build/e2b-newest flock /tmp/chaser-vm.lock $(VENV)/bin/pytest tests/integration/test_e2b.py -q -rf \
		-p no:cacheprovider && echo "e2b drift: none" || echo "e2b drift: the failures above (only the pinned e2b must pass)"

# E2B's JS SDK (create, run, kill: tests/integration/e2b_js/smoke.mjs), installed from npm under build/
# once (Debian's nodejs and npm when the machine has no node); make test runs its test.
E2B_JS_VERSION := 2.51.0
build/e2b-js/.installed: Makefile
	@command -v npm >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm)
	@mkdir -p build/e2b-js && cd build/e2b-js && npm install --no-audit --no-fund --silent e2b@$(E2B_JS_VERSION)
	@touch $@

test-e2b-js: setup
	flock /tmp/chaser-vm.lock $(VENV)/bin/pytest tests/integration/test_e2b.py -q -k js_sdk

bench: setup
	$(PY) bench/all.py
