# Two commands for a new user (see README.md): `make demo` and `make test`.
# Both create .venv with the package and its test extras on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench chaos clean

$(VENV)/.installed: setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m boefje_runtime.demo

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/bench.py

chaos: $(VENV)/.installed
	$(PY) benchmarks/chaos.py

clean:
	rm -rf $(VENV) build *.egg-info
