# depot-api: `make run` starts the server on an embedded SQLite database; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NODE_E2E := tests/e2e/node
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast check lint typecheck generate generate-check clean \
	bench bench-smoke bench-tools test-daemon-tools test-browser crash-loop crash-loop-smoke

install: $(STAMP) $(NODE_E2E)/node_modules/.installed test-daemon-tools test-browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(NODE_E2E)/node_modules/.installed: $(NODE_E2E)/package.json $(NODE_E2E)/package-lock.json
	cd $(NODE_E2E) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: $(STAMP)
	$(BIN)/depot-api serve

# Two workers: most end-to-end tests wait on server processes, agents and real clients, so two
# run in about the time of one. worksteal evens out the long tests at the end.
test: install
	$(BIN)/pytest -n 2 --dist worksteal

# The in-process tests only (no server processes, agents or real clients): a quick loop.
test-fast: $(STAMP)
	$(BIN)/pytest -m "not e2e and not buildkit"

# Benchmarks (bench/README.md): the full run, and a short bounded one that CI runs.
bench: install bench-tools
	$(BIN)/python -m bench.run

bench-smoke: install bench-tools
	$(BIN)/python -m bench.run --quick

# The crash-safety campaign (campaigns/README.md): SIGKILL the server under CreateBuild and
# FinishBuild load, restart it, again and again, and check that no acknowledged write is lost.
# The checker is first shown to catch wrong records (--self-check, no server).
crash-loop: $(STAMP)
	$(BIN)/python -m campaigns.crash_loop --self-check
	$(BIN)/python -m campaigns.crash_loop --backend sqlite --kills 20
	$(BIN)/python -m campaigns.crash_loop --backend postgresql --kills 20

# A bounded run for CI: a few kills per backend (about a minute).
crash-loop-smoke: $(STAMP)
	$(BIN)/python -m campaigns.crash_loop --self-check
	$(BIN)/python -m campaigns.crash_loop --backend sqlite --kills 3 --seconds-between-kills 3
	$(BIN)/python -m campaigns.crash_loop --backend postgresql --kills 3 --seconds-between-kills 3

# The load generators, from Debian's packages.
bench-tools:
	@command -v h2load >/dev/null && command -v wrk >/dev/null || \
	  (apt-get install -y -q nghttp2-client wrk || \
	   (apt-get update -q && apt-get install -y -q nghttp2-client wrk))

# The real BuildKit the tests build on (tests/docker_engine.py): Debian's Docker Engine, whose
# dockerd embeds BuildKit, and a static busybox for the tests' base image. Debian's client is
# /usr/bin/docker; the tests call it by that path. Where they cannot be installed (no root, not
# Debian) the rest of the setup goes on, and the buildkit tests say why they cannot run.
test-daemon-tools:
	@test -x /usr/sbin/dockerd && test -x /usr/bin/docker && test -x /bin/busybox || \
	  (apt-get install -y -q docker.io busybox-static || \
	   (apt-get update -q && apt-get install -y -q docker.io busybox-static)) || \
	  echo 'docker.io and busybox-static could not be installed: the tests marked buildkit will fail (pytest -m "not buildkit" deselects them)' >&2

# The browser the page tests drive (through Playwright, from PyPI): Debian's chromium, so that
# nothing is downloaded when the tests run. Where it cannot be installed the setup goes on, and
# the browser tests say what is missing.
test-browser:
	@test -x /usr/bin/chromium || \
	  (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) || \
	  echo 'chromium could not be installed: the browser tests will fail' >&2

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench) $(wildcard campaigns)
	$(BIN)/ruff format --check src tests $(wildcard bench) $(wildcard campaigns)

typecheck: $(STAMP)
	$(BIN)/mypy

generate: $(STAMP)
	rm -rf src/depot_api/gen
	$(BIN)/buf generate

# Regenerate into a scratch copy and fail if the committed code differs.
generate-check: $(STAMP)
	@tmp=$$(mktemp -d) && cp -r proto buf.yaml $$tmp/ && \
	sed 's#local: .venv/bin/#local: $(CURDIR)/$(BIN)/#; s#out: src/depot_api/gen#out: gen#' buf.gen.yaml > $$tmp/buf.gen.yaml && \
	(cd $$tmp && $(CURDIR)/$(BIN)/buf generate) && \
	diff -r $$tmp/gen src/depot_api/gen && rm -rf $$tmp && echo "generated code is up to date"

check: lint typecheck generate-check test

# Contract fuzzing (campaigns/contract_fuzz.py): Schemathesis against a real server, checked
# against the server's own /openapi.yaml; at least 1 000 requests over every operation.
.PHONY: fuzz-contract
fuzz-contract: $(STAMP)
	$(BIN)/python -m campaigns.contract_fuzz --requests 1000

# Protocol fuzzing (tests/api/test_protocol_fuzz.py) with its campaign profile: 3 000 random
# malformed requests per property over every protocol, a few minutes.
.PHONY: fuzz-protocol
fuzz-protocol: $(STAMP)
	HYPOTHESIS_PROFILE=campaign $(BIN)/pytest tests/api/test_protocol_fuzz.py -p no:cacheprovider

clean:
	rm -rf $(VENV) $(NODE_E2E)/node_modules .mypy_cache .ruff_cache .pytest_cache
