# The two commands of the README, plus the pieces they are made of.
#   make test   set up everything on a fresh machine, then lint, type-check and run the suite
#   make demo   set up everything, then run the demo against a real local Kafka

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
KAFKA_CACHE := .cache/kafka

.PHONY: test demo bench soak lint typecheck pytest kafka prometheus consul-sd-check test-tools clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(KAFKA_CACHE)/current: ops/kafka/pom.xml ops/kafka/fetch.sh
	ops/kafka/fetch.sh $(KAFKA_CACHE)
	touch $@

kafka: $(KAFKA_CACHE)/current

# Prometheus' own Consul SD code as a command (Debian's prometheus is built without it), for
# tests/test_consul_sd.py; built from the Go module proxy only when outdated.
consul-sd-check:
	ops/prometheus/consul-sd-check/build.sh

# Small Debian tools: libfaketime for the clock-skew test.
test-tools:
	ops/install-debian-tools.sh faketime:faketime

# Debian's prometheus + promtool for the observability tests (installed only when missing).
prometheus:
	ops/prometheus/install.sh

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(INSTALLED)
	$(BIN)/mypy --strict agent

pytest: $(INSTALLED) kafka prometheus consul-sd-check test-tools
	$(BIN)/pytest

test: lint typecheck pytest

demo: $(INSTALLED) kafka
	$(BIN)/peering demo

# Issue 8's figures: a table, and JSON in bench/results/suite.json (about 6 minutes).
bench: $(INSTALLED) kafka
	ops/install-debian-tools.sh wrk:wrk
	$(BIN)/python bench/suite.py --json bench/results/suite.json

# The seeded fault campaign for 20 minutes (make test runs it for 25 s); prints its seed and
# a summary line: operations, faults, bad inputs, differences (must be 0), duplicates (0).
soak: $(INSTALLED) kafka
	PEERING_CAMPAIGN_SECONDS=1200 $(BIN)/pytest -s --timeout 1800 tests/test_fault_campaign.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
