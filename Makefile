# The two quick-start commands: `make demo` (the main job end to end) and `make test`.
# Each creates or reuses the local virtual environment .venv (re-installed when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jaxsae-installed

.PHONY: demo test test-e2e test-slow bench system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[extract,analysis,dev,interop]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) experiments/quickstart.py $(ARGS)

system-deps:
	@tools/system-deps.sh

test: $(STAMP) system-deps
	$(PY) -m pytest -q $(ARGS)

test-e2e: $(STAMP) system-deps
	$(PY) -m pytest -q -m 'e2e and not slow' $(ARGS)

test-slow: $(STAMP)
	@tools/system-deps.sh --slow
	$(PY) -m pytest -q -m slow $(ARGS)

bench: $(STAMP)
	$(PY) experiments/bench_train.py
