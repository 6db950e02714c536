# Two commands for a new user (see README.md): `make demo` and `make test`.
# Both create .venv with the package and its test extras on first use, at the versions pinned in
# constraints.txt (the one place they are pinned).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Extra pytest arguments for both steps of `make test`, e.g. PYTEST_ARGS="-k pool -x".
PYTEST_ARGS ?=
# How many processes run the fast tests (pytest-xdist). Most wait on real processes and HTTP, so
# more processes than cores pay off: on 2 cores 4 ran the fast suite in about 4 minutes against 10
# in one process. PYTEST_WORKERS=0: one process, tests in file order (for -x, or for pdb). The slow
# cases run one at a time, as they were written to: the chaos runs judge a pool of 4 against
# deadlines (beside each other and the benchmark's pools, a task missed its settle time), and
# together they take about as long as in parallel.
PYTEST_WORKERS ?= 4

.PHONY: demo test test-fast test-slow lint bench chaos clean

$(VENV)/.installed: setup.cfg setup.py pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m boefje_runtime.demo

# pytest exits 5 when a step selects no test. Without PYTEST_ARGS that means the suite lost its
# tests (or the `slow` marker): an error. With a developer's filter (PYTEST_ARGS="-k oneshot"),
# a step it leaves empty is expected, and said so.
define pytest_step
	$(PY) -m pytest -q -n $(2) $(1) $(PYTEST_ARGS) || { code=$$?; \
	  if [ $$code -eq 5 ] && [ -n '$(strip $(PYTEST_ARGS))' ]; then echo "make: PYTEST_ARGS left no test in this step"; \
	  else exit $$code; fi; }
endef

# Everything, fast tests first: a fast failure is reported before the slow cases (the 150-task
# chaos run, the benchmark smoke test) spend their minutes.
test: lint test-fast test-slow

lint: $(VENV)/.installed
	$(PY) -m ruff check .

test-fast: $(VENV)/.installed
	$(call pytest_step,-m 'not slow',$(PYTEST_WORKERS))

test-slow: $(VENV)/.installed
	$(call pytest_step,-m slow,0)

bench: $(VENV)/.installed
	$(PY) benchmarks/bench.py

chaos: $(VENV)/.installed
	$(PY) benchmarks/chaos.py

clean:
	rm -rf $(VENV) build *.egg-info
