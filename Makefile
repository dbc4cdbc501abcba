# Every target bootstraps .venv on first use. TORCH_SPEC picks the torch build:
#   default torch==2.13.0 (CPU); e.g. TORCH_SPEC="torch==2.13.0 --index-url <your CUDA index>" for GPUs.
# Every other package comes at the version pinned in requirements.lock (see `make lock`).
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,parquet,joblib,record
# The extras `make lock` resolves together: every optional extra, so any EXTRAS installs from it.
LOCK_EXTRAS ?= dev,parquet,joblib,record,cluster,peers,mlx
LOCK := requirements.lock
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell echo "$(TORCH_SPEC) $(EXTRAS)" | cat - $(LOCK) | cksum | cut -d' ' -f1)

.PHONY: venv lock run test test-all lint bench bench-compare bench-plot clean

venv: $(STAMP)

# torch first and unconstrained (TORCH_SPEC may name another index, which need not carry the
# locked versions of torch's own dependencies); then the build tools and the project from the
# lock. The project builds without isolation, with the locked setuptools, so the build is pinned too.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) pip setuptools
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -c $(LOCK) --no-build-isolation -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

# Refresh the lock deliberately: resolve the newest versions pyproject.toml admits in a scratch
# environment, write them to requirements.lock (torch excluded: TORCH_SPEC owns it), then run
# `make test` (and `.ci/run`) before committing the new lock.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip setuptools
	.lock-venv/bin/python -m pip install --quiet $(TORCH_SPEC)
	.lock-venv/bin/python -m pip install --quiet --no-build-isolation -e ".[$(LOCK_EXTRAS)]"
	{ echo "# Every package the test suite passed with, for CPython 3.11 on Linux x86_64 (torch excluded:"; \
	  echo "# the Makefile's TORCH_SPEC picks it). Used as pip constraints by the Makefile and so by .ci/run."; \
	  echo "# Refresh with \`make lock\`, then \`make test\` and \`.ci/run\`, and commit it with the result."; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v -i -E '^torch=='; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .lock-venv

# The main job: the default sweep (policies x GPU cache sizes on the embedded default trace);
# it ends by printing where the report (table, plots, report.md) is.
run: venv
	$(PY) -m moesim.sim +experiment=default_sweep

# The default test suite (slow tests excluded; `make test-all` runs everything).
test: venv
	$(PY) -m pytest -q -m "not slow" --durations=15

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
	$(PY) -m moesim.bench.history .benchmarks --out outputs/bench_history.png

clean:
	rm -rf .lock-venv $(VENV) outputs multirun .pytest_cache .benchmarks
