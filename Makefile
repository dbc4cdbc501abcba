# Every target bootstraps .venv on first use. TORCH_SPEC picks the torch build:
#   default torch==2.13.0 (CPU); e.g. TORCH_SPEC="torch==2.13.0 --index-url <your CUDA index>" for GPUs.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,parquet,joblib,record
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell echo "$(TORCH_SPEC) $(EXTRAS)" | cksum | cut -d' ' -f1)

.PHONY: venv run test test-all lint bench bench-compare bench-plot clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

# The main job: the default sweep (policies x GPU cache sizes on the embedded default trace);
# it ends by printing where the report (table, plots, report.md) is.
run: venv
	$(PY) -m sim +experiment=default_sweep

# The default test suite (slow tests excluded; `make test-all` runs everything).
test: venv
	$(PY) -m pytest -q -m "not slow"

test-all: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .

# Timed benchmarks, saved under .benchmarks/<machine>/ (keep one baseline per machine: the
# numbers are only comparable on the machine that produced them).
BENCH_OPTS = -p no:cacheprovider --benchmark-enable --benchmark-group-by=group --benchmark-columns=min,median,ops
bench: venv
	$(PY) -m pytest bench $(BENCH_OPTS) --benchmark-autosave

# Compare with the last saved run; fail when a benchmark's minimum time grew by more than 25%
# (the minimum is the statistic least disturbed by other load; shared 2-core machines still move
# it by 10-20% from run to run, so a tighter threshold would cry wolf).
bench-compare: venv
	$(PY) -m pytest bench $(BENCH_OPTS) --benchmark-compare --benchmark-compare-fail=min:25%

bench-plot: venv
	$(PY) -m bench.history .benchmarks --out outputs/bench_history.png

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .benchmarks
