# eyefuse: everything from a bare python3. `make demo` and `make test` create .venv, install, run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's dependency list changed. uv when it can be had, pip otherwise.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	@if $(PY) -m pip install -q uv >/dev/null 2>&1 && $(VENV)/bin/uv --version >/dev/null 2>&1; then \
	  echo "installing with uv"; \
	  $(VENV)/bin/uv pip install --python $(PY) -e '.[all,dev]'; \
	else \
	  echo "uv unavailable: installing with pip"; \
	  $(PY) -m pip install -e '.[all,dev]'; \
	fi
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/eyefuse demo --out demo

test: install
	bash scripts/test.sh

# The fast lane: lint + every test not marked slow (nothing that trains a model or takes seconds).
test-fast: install
	bash scripts/test.sh -m "not slow"

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	$(PY) benchmarks/bench_preprocess.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
