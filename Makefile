# stdask: `make test` and `make demo` work on a fresh machine (Python 3.11, pip reaching PyPI).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo venv bench clean

venv: $(STAMP)

# torch is pinned first so pip takes the CPU wheel, not a multi-GB CUDA build
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# two pytest workers, each test file on one worker (files share module fixtures); numba compiles its
# kernels on first use, which a fresh clone pays once per kernel, in parallel this way
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: $(STAMP)
	$(VENV)/bin/stdask demo demo_results

bench: $(STAMP)
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) demo_results .pytest_cache
