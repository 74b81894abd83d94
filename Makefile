# prodassoc: `make demo` and `make test` work on a fresh machine with Python 3.11.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# a new .venv takes 3.1 GB (measured); refuse to start an install that would fill the disk part way
INSTALL_FREE_KB ?= 4194304
DEMO_DIR ?= .prodassoc/demo
DEMO_AS_OF ?= 2011-11-08
DEMO_TRAIN_MINUTES ?= 2
# pytest-xdist workers for make test and test-fast: one per core and one more. A worker waiting on
# a server, Spark's JVM or a subprocess leaves its core idle otherwise. On 2 cores (make test, CI=true),
# side by side: 3 workers 375 s against 2 workers 400 s (4 workers 459 s); after the Great Expectations
# changes of 155786f, 343 against 369 s
TEST_WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 1) + 1 )))
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= 1
export OMP_NUM_THREADS ?= 1
# Python's bytecode cache on, whatever the shell says: with PYTHONDONTWRITEBYTECODE set (as on these
# machines) each test worker compiles every test file again to rewrite its asserts (collection took
# 11 s of CPU per worker, 8 s with the cache) and each subprocess recompiles the project
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help install browser demo test test-fast bench bench-scale clean

## help: list the targets with what they do
## install: create .venv (Python 3.11) and install torch (CPU wheel) and prodassoc with its dev extras
## browser: best effort: install Debian's headless Chromium for the Data Docs browser test (root + apt)
## demo: the whole product on the shipped sample: import (with bad rows), train, gate, nightly, what was served (DEMO_DIR)
## test: the whole test suite on every core, TEST_WORKERS = cores + 1 (installs first; tiers in tests/conftest.py; production tests need CI=true)
## test-fast: the unit tier only (not slow, production, spark or gpu), for the edit loop
## bench: rule mining against pyfim and mlxtend (benchmarks/bench_mining.py), nearest products against numpy (bench_top_k.py), validation against catalog size (bench_validation_catalog.py), then bench-scale
## bench-scale: the nightly, local vs spark engine, at BENCH_SCALE_SIZES x Online Retail (benchmarks/bench_scale.py; 1x: ~15 min)
## clean: remove .venv, .prodassoc and the pytest cache

install: $(STAMP) browser

help:
	@echo "prodassoc make targets:"
	@awk '/^## [A-Za-z][-A-Za-z_]*: / { line = substr($$0, 4); i = index(line, ": "); d[substr(line, 1, i - 1)] = substr(line, i + 2); next } \
	     /^[A-Za-z][-A-Za-z_]*:/ { t = substr($$0, 1, index($$0, ":") - 1); if (!(t in seen)) { seen[t] = 1; order[++n] = t } } \
	     END { for (k = 1; k <= n; k++) printf "  make %-10s %s\n", order[k], (order[k] in d) ? d[order[k]] : "(undocumented)" }' $(MAKEFILE_LIST)

# Headless Chromium for tests/data/test_data_docs_browser.py. Never fails the build: without root or
# apt-get the browser test skips and says why.
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium (apt-get) for the Data Docs browser test"; \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null 2>&1 \
	    || echo "chromium could not be installed: the Data Docs browser test will skip"; \
	else echo "no chromium and no root apt-get: the Data Docs browser test will skip"; fi

# torch first, pinned: on CPU-only machines torch==2.13.0 is a local CPU wheel, while an
# unpinned torch (or one pulled in by another package) is a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "prodassoc needs Python 3.11, found " + sys.version' 
	@if [ ! -x $(BIN)/python ]; then free_kb=$$(df -Pk . | awk 'NR == 2 { print $$4 }'); \
	  if [ -n "$$free_kb" ] && [ "$$free_kb" -lt $(INSTALL_FREE_KB) ]; then \
	    echo "prodassoc: make install needs about $$(($(INSTALL_FREE_KB) / 1048576)) GB free for $(VENV) (torch, transformers, pyspark, ...) and pip's downloads; $$((free_kb / 1024)) MB free under $$(pwd)" >&2; \
	    exit 1; fi; fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	@if ! command -v java >/dev/null; then \
	  echo "NOTE: java is not on PATH: the spark engine (PRODASSOC_ENGINE=spark) needs Java 17 (apt-get install openjdk-17-jre-headless); tests/spark will skip"; \
	elif [ "$$(java -version 2>&1 | awk -F'"' '/version/ { split($$2, v, "."); print v[1]; exit }')" -lt 17 ] 2>/dev/null; then \
	  echo "NOTE: $$(java -version 2>&1 | head -1): the spark engine needs Java 17 or newer; tests/spark will fail to start Spark"; fi
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	@echo "== 1/5 import the shipped Online Retail sample, and a till export with bad rows"
	$(BIN)/prodassoc --data-dir $(DEMO_DIR) import online-retail data/sample/online_retail_sample.parquet
	$(BIN)/python scripts/demo_bad_rows.py $(DEMO_DIR)
	@echo "== 2/5 train the model chain (MLM, teacher, student, GNN) within $(DEMO_TRAIN_MINUTES) minutes, then the serving gate"
	$(BIN)/prodassoc --data-dir $(DEMO_DIR) train --as-of $(DEMO_AS_OF) --seed 0 --max-minutes $(DEMO_TRAIN_MINUTES)
	$(BIN)/python scripts/demo_serve.py $(DEMO_DIR) $(DEMO_AS_OF)
	@echo "== 3/5 the nightly: ingest, validate, baskets, rules, associations, bundles, publish"
	$(BIN)/prodassoc --data-dir $(DEMO_DIR) run --as-of $(DEMO_AS_OF)
	@echo "== 4/5 top associations"
	$(BIN)/prodassoc --data-dir $(DEMO_DIR) top --limit 10
	@echo "== 5/5 what was served, cold-start products, bundles, quarantine, where everything is"
	$(BIN)/python scripts/demo_report.py $(DEMO_DIR) $(DEMO_AS_OF)

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_mining.py
	$(BIN)/python benchmarks/bench_top_k.py
	$(BIN)/python benchmarks/bench_validation_catalog.py
	$(MAKE) bench-scale

# docs/spark.md's table: --sizes 1,10 (an hour or more on 2 cores). Runs past BENCH_SCALE_CAP_GIB of RSS are stopped.
BENCH_SCALE_SIZES ?= 1
BENCH_SCALE_CAP_GIB ?= 14
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/bench_scale.py --sizes $(BENCH_SCALE_SIZES) --cap-gib $(BENCH_SCALE_CAP_GIB) \
	  --json .prodassoc/bench_scale.json --plot .prodassoc/bench_scale.png

clean:
	rm -rf $(VENV) .prodassoc .pytest_cache
