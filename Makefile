# Set-up and the two jobs of the README's quick start.  Everything goes into .venv (torch pinned first, so pip never
# fetches another torch; the C++ extension is built against it with --no-build-isolation).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
EXTRAS ?= test,dali,plot

.PHONY: setup demo test bench

$(VENV)/.installed: setup.py pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt --no-build-isolation --use-pep517 -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/vlmo-fast demo runs/demo

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) -m pytest -q benchmarks --benchmark-columns=median,ops
