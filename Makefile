# Periscope: `make demo` runs the main job on the embedded defaults; `make test` lints and runs every
# test tier.
# Both set up whatever is missing first. `make help` lists the targets.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON   ?= python3.11
UV_VERSION := 0.13.9
VENV     := .venv
PY       := $(VENV)/bin/python
UV       := $(VENV)/bin/uv
PERISCOPE := $(VENV)/bin/periscope
JARS     := .local/jars
MVN      := mvn -q -B -Dstyle.color=never -s jvm/settings.xml
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help setup system-deps demo serve test test-unit test-integration test-reliability lint lock services-up services-down clean distclean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: system-deps $(VENV)/.installed $(JARS)/kafka/.fetched $(JARS)/spark/.fetched .env ## Install everything that is missing (idempotent, quiet when done)

# Java 17 (Kafka, Spark), Maven (fetches the jars), the PostgreSQL server, Chromium (browser tests and
# dashboard screenshots, driven by Playwright with executable_path) and Prometheus (scrapes the stages), from Debian packages.
system-deps:
	@missing=""; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: Periscope needs Python 3.11 (set PYTHON=...)"; exit 1; }
	@echo "creating $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q uv==$(UV_VERSION)

# Exact versions come from requirements.lock (make lock); the project itself is editable.
# Bytecode is compiled at install (~40 s once): where PYTHONDONTWRITEBYTECODE is set (this
# machine sets it) Python never caches it, and every process (each CLI step, Ray and Spark worker,
# test subprocess) compiled its imports again: ~10 s of a `periscope train` that had nothing to do.
$(VENV)/.installed: $(VENV)/bin/python requirements.lock pyproject.toml
	@echo "installing Python dependencies from requirements.lock"
	@$(UV) pip sync -q --compile-bytecode --python $(PY) requirements.lock
	@$(UV) pip install -q --compile-bytecode --python $(PY) --no-deps -e .
	@touch $@

# The Kafka broker, and Spark's Kafka connector + Delta jars, from Maven Central (no Ivy).
$(JARS)/kafka/.fetched: jvm/kafka-broker/pom.xml jvm/settings.xml
	@echo "fetching the Kafka broker jars with mvn into $(JARS)/kafka"
	@rm -rf $(JARS)/kafka && mkdir -p $(JARS) && $(MVN) -f jvm/kafka-broker/pom.xml dependency:copy-dependencies \
	  -Djars.dir=$(CURDIR)/$(JARS)/kafka >$(JARS)/mvn-kafka.log 2>&1 \
	  || { cat $(JARS)/mvn-kafka.log; echo "mvn failed: see $(JARS)/mvn-kafka.log"; exit 1; }
	@touch $@

$(JARS)/spark/.fetched: jvm/spark/pom.xml jvm/settings.xml
	@echo "fetching the Spark Kafka connector and Delta jars with mvn into $(JARS)/spark"
	@rm -rf $(JARS)/spark && mkdir -p $(JARS) && $(MVN) -f jvm/spark/pom.xml dependency:copy-dependencies \
	  -Djars.dir=$(CURDIR)/$(JARS)/spark >$(JARS)/mvn-spark.log 2>&1 \
	  || { cat $(JARS)/mvn-spark.log; echo "mvn failed: see $(JARS)/mvn-spark.log"; exit 1; }
	@touch $@

# A local .env with random passwords; never overwritten once it exists.
.env: | $(VENV)/bin/python
	@echo "writing .env from .env.example with random local passwords"
	@$(PY) scripts/write_env.py .env.example .env

# The demo replays the first DEMO_DAYS days of real history rebased so they end now; a later run
# sends only the history that "happened" since (ingest replay --follow-clock), so it adds new data only.
DEMO_DAYS ?= 40
DEMO_STATIONS ?= portland,seattle,denver,new_york,jerusalem
# Taxi: the first DEMO_TAXI_DAYS of January 2023's green-taxi trips, rebased to end now (the file
# holds 31 days, so after a few days of wall time a rerun has no more trips to send).
DEMO_TAXI_DAYS ?= 28
DEMO_TRAIN_SOURCES ?= --source weather --source air_quality --source taxi
DEMO_ACCURACY_SQL := select m.source, m.measure, m.unit, a.horizon_h, count(*) as forecasts, \
  round(avg(a.abs_error)::numeric, 2) as mae, round(avg(a.in_interval::int)::numeric, 2) as coverage_80 \
  from marts.fct_forecast_accuracy a join marts.dim_measure m using (measure_key) \
  where a.horizon_h in (1, 6, 24) group by 1, 2, 3, 4 order by 1, 2, 4
DEMO_ANOMALIES_SQL := select e.source, e.entity_label || ' ' || e.entity_id as entity, f.window_start, \
  round(f.anomaly_score::numeric, 3) as score, d.model_name, d.model_version \
  from marts.fct_anomaly f join marts.dim_entity e using (entity_key) \
  join marts.dim_model d using (model_key) where f.is_anomaly order by f.anomaly_score desc limit 8
DEMO_TRIPS_SQL := with t as (select *, pickup_time >= max(pickup_time) over () - interval '3 days' as held_out \
  from marts.fct_trip where predicted_duration_min is not null) \
  select case when held_out then 'last 3 days (the model never saw them)' else 'earlier (training weeks)' end as trips, \
  count(*) as scored, round(avg(abs(duration_error))::numeric, 2) as duration_mae_min, \
  round(avg(abs(fare_error))::numeric, 2) as fare_mae_usd, max(model_version) as model_version from t group by held_out order by 1
DEMO_DEMAND_SQL := with busy as (select pickup_zone_key, count(*) as trips from marts.fct_trip \
  group by 1 order by 2 desc limit 5), \
  latest as (select distinct on (f.entity_key, f.horizon_h) f.* from marts.fct_forecast f \
  where f.source = 'taxi' and f.horizon_h in (1, 6, 24) order by f.entity_key, f.horizon_h, f.window_start desc) \
  select z.zone_name, z.borough, b.trips as trips_so_far, l.horizon_h, l.target_time, round(l.yhat::numeric, 1) as trips_forecast, \
  round(l.yhat_lower::numeric, 1) as lower_80, round(l.yhat_upper::numeric, 1) as upper_80, l.method \
  from busy b join marts.dim_zone z on z.zone_key = b.pickup_zone_key \
  join latest l on l.entity_key = z.entity_key order by b.trips desc, l.horizon_h

demo: setup ## The whole main job: replay (rebased to now) -> bronze -> silver -> train if needed -> score -> warehouse -> dbt
	@$(PERISCOPE) services up
	@$(PERISCOPE) topics create
	@$(PERISCOPE) ingest replay --source weather --stations $(DEMO_STATIONS) --follow-clock \
	  --days $(DEMO_DAYS) --bad-rate 0.01
	@$(PERISCOPE) ingest replay --source air_quality --follow-clock --days $(DEMO_DAYS) --bad-rate 0.01
	@$(PERISCOPE) ingest replay --source taxi --follow-clock --days $(DEMO_TAXI_DAYS) --bad-rate 0.01
	@$(PERISCOPE) bronze run --available-now
	@$(PERISCOPE) silver run --available-now
	@$(PERISCOPE) train --missing-only $(DEMO_TRAIN_SOURCES) --test-days 3 --validation-days 3 --max-train-days 30
	@$(PERISCOPE) score --available-now
	@$(PERISCOPE) warehouse load
	@$(PERISCOPE) dbt build
	@$(PERISCOPE) lake audit --require-caught-up
	@echo "forecast accuracy (marts.fct_forecast_accuracy, as bi_reader):"
	@$(PERISCOPE) warehouse query "$(DEMO_ACCURACY_SQL)"
	@echo "top anomalies (marts.fct_anomaly):"
	@$(PERISCOPE) warehouse query "$(DEMO_ANOMALIES_SQL)"
	@echo "taxi trips scored by the speed layer (marts.fct_trip: mean absolute error against the real trip):"
	@$(PERISCOPE) warehouse query "$(DEMO_TRIPS_SQL)"
	@echo "the busiest taxi zones' demand forecast (trips per hour, latest origin, 80% band):"
	@$(PERISCOPE) warehouse query "$(DEMO_DEMAND_SQL)"
	@echo
	@echo "Where to look next:"
	@echo "  periscope sql --tables                       every lake table (DuckDB views <layer>.<table>)"
	@echo "  periscope sql \"select * from gold.weather_predictions limit 5\""
	@echo "  periscope models list                        registered models, champions"
	@echo "  periscope dbt docs && open dbt_project/target/index.html   the star schema's lineage"
	@echo "  Superset/Tableau: postgresql://bi_reader@127.0.0.1:5433/periscope, schema marts (password in .env)"
	@echo "  make demo again: only the history that 'happened' since is replayed and loaded"
	@echo "  make serve                                   the REST API and the live dashboard: http://127.0.0.1:8000/docs, http://127.0.0.1:8501"
	@$(PERISCOPE) bi provision
	@$(PERISCOPE) bi open

serve: ## The REST API and the live dashboard together (their URLs print as they start; Ctrl-C stops both)
	@$(PERISCOPE) api & api=$$!; trap "kill $$api 2>/dev/null" EXIT INT TERM; $(PERISCOPE) dashboard

# The tiers, each defined once. The unit tier is bare pytest (pyproject testpaths: the packages'
# docstring examples under --doctest-modules, then tests/unit); the integration tier goes by path.
define LINT
$(VENV)/bin/ruff check .
$(VENV)/bin/ruff format --check .
$(VENV)/bin/mypy
endef
# The unit tier spreads over the cores (pytest-xdist): each worker pays the ~18 s of imports once.
UNIT_TESTS := $(PY) -m pytest -q -n auto --maxprocesses=4 --durations=15
INTEGRATION_TESTS := $(PY) -m pytest tests/integration -q --durations=30

test: setup ## Lint, then the unit tier (with docstring examples), then the integration tier
	@$(LINT)
	@$(UNIT_TESTS)
	@$(INTEGRATION_TESTS)

test-unit: setup ## The fast tier: docstring examples and tests/unit (no services, no Spark)
	@$(UNIT_TESTS)

test-integration: setup ## Real Kafka, PostgreSQL, Spark + Delta, Ray (starts the test services it needs, stops them)
	@$(INTEGRATION_TESTS)

test-reliability: setup ## The reliability suite's integration run alone (100k records, 5 kills, a broker restart; ~3 min; also in make test)
	@$(PY) -m pytest tests/integration/test_reliability.py -q -m reliability

lint: setup ## ruff check, ruff format --check, mypy
	@$(LINT)

lock: $(VENV)/bin/python ## Re-resolve requirements.lock from pyproject.toml
	@$(UV) pip compile -q pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

services-up: setup ## periscope services up
	@$(PERISCOPE) services up

services-down: ## periscope services down
	@[ ! -x $(PERISCOPE) ] || $(PERISCOPE) services down

clean: services-down ## Stop services and delete run-time state (.local, lake contents)
	@rm -rf .local lake/_checkpoints
	@find lake -mindepth 2 -maxdepth 2 ! -name README.md -exec rm -rf {} +

distclean: clean ## Also delete the virtualenv and .env
	@rm -rf $(VENV) .env
