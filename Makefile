# Both targets create (or reuse) .venv and install the package with its dev dependencies.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sb-accel-installed

.PHONY: demo test test-all bench clean

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

clean:
	rm -rf runs benchmarks/out engines/cache .pytest_cache
