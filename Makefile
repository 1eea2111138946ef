# fraudkit developer commands. `make demo` and `make test` are the README's two commands.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv kafka browser demo test lint unit bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Apache Kafka's jars, fetched once by Maven into ~/.cache/fraudkit and verified against pinned SHA-256s.
kafka: $(STAMP)
	$(BIN)/fraudkit broker install

# The dashboard's browser test drives Debian's headless Chromium (Playwright cannot download browsers here).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "the dashboard's browser test needs Chromium: install the chromium package"; exit 1; }

# The demo runs on Apache Kafka when Java and Maven are there, else on the embedded Tansu broker.
demo: $(STAMP)
	@if command -v mvn >/dev/null && command -v java >/dev/null; then \
	  $(BIN)/fraudkit broker install || echo "Apache Kafka could not be installed: the demo uses Tansu"; \
	else echo "Maven or Java not found: the demo uses the embedded Tansu broker"; fi
	$(BIN)/fraudkit demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: $(STAMP) lint kafka browser
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP) kafka
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist src/*.egg-info
