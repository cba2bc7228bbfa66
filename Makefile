# Both targets create (or reuse) .venv and install the package with its dev dependencies.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sb-accel-installed

.PHONY: demo test test-all bench clean gpu-check

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sb-accel demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=10

test-all: $(STAMP)
	$(PY) -m pytest -q

# On a GPU machine, no install and no network: python3 with torch and the checkout on PYTHONPATH
# (CIFAR-10 in .gpu-data/, see benchmarks/gpu_check.py). Results: benchmarks/results/<date>-<gpu>/.
gpu-check:
	PYTHONPATH=. $(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf runs benchmarks/out engines/cache .pytest_cache
