# quakescan: the README's two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test install install-dev promtool default-models bench quality lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Runtime only (no torch): what a worker image has.
install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

# Everything for development and the tests. torch 2.13.0 (CPU build) first: an
# unpinned torch would pull a CUDA build of several GB.
install-dev: $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,test]'

# promtool (Debian's prometheus package) for the alert-rule tests; the deploy
# tests skip with the reason printed where it cannot be installed.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 || \
	     (apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1)) || \
	    echo "promtool not installed: the promtool checks will be skipped"; \
	  else echo "promtool not found and not root: the promtool checks will be skipped"; fi; }

# 1. The main job on the shipped defaults: the in-process service (feeder,
#    Celery worker, sink; no Redis, no GPU) over the shipped real waveform sample.
demo: install
	$(BIN)/quakescan serve --out-dir catalogs

# 2. The whole test suite.
test: install-dev promtool
	$(BIN)/pytest -q

# Rebuild the shipped models from the shipped training data (see README).
default-models: install-dev
	bash training/reproduce.sh

bench: install-dev
	$(BIN)/pip install --quiet seisbench
	$(BIN)/python benchmarks/detector_bench.py
	$(BIN)/python benchmarks/serving_bench.py

quality: install
	$(BIN)/python benchmarks/quality.py --plot docs/quality.png

lint: install-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs catalogs .pytest_cache
