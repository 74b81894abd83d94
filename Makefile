# prodassoc: `make demo` and `make test` work on a fresh machine with Python 3.11.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .prodassoc/demo
DEMO_AS_OF ?= 2011-11-08
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= 1
export OMP_NUM_THREADS ?= 1

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

# torch first, pinned: on CPU-only machines torch==2.13.0 is a local CPU wheel, while an
# unpinned torch (or one pulled in by another package) is a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "prodassoc needs Python 3.11, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/prodassoc --data-dir $(DEMO_DIR) import online-retail data/sample/online_retail_sample.parquet
	$(BIN)/prodassoc --data-dir $(DEMO_DIR) run --as-of $(DEMO_AS_OF)
	$(BIN)/prodassoc --data-dir $(DEMO_DIR) top --limit 10
	@echo
	@echo "Tables: $(DEMO_DIR)/warehouse   DuckDB: $(DEMO_DIR)/prodassoc.duckdb"
	@echo "Data Docs: $(DEMO_DIR)/gx/uncommitted/data_docs/local_site/index.html"
	@echo "Try: $(BIN)/python -c \"import duckdb; print(duckdb.connect('$(DEMO_DIR)/prodassoc.duckdb', read_only=True).sql('SELECT * FROM latest_association_rules ORDER BY lift DESC LIMIT 5'))\""

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_mining.py

clean:
	rm -rf $(VENV) .prodassoc .pytest_cache
