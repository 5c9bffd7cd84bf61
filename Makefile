# Two entry points for a newcomer: `make demo` and `make test`.
# Both create their own virtualenv (.venv) with pinned versions (constraints.txt) on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-slow clean-venv

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m vdb.demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

clean-venv:
	rm -rf $(VENV)
