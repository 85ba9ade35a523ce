# Quick start: `make demo` runs the main demo, `make test` runs the test suite.
# Both create .venv and install equipoise into it on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/equipoise: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/equipoise

.PHONY: install demo test test-slow bench clean
install: $(BIN)/equipoise

demo: install
	$(BIN)/equipoise diffraction demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/python benchmarks/core_overhead.py
	$(BIN)/python benchmarks/diffraction_forward.py
	$(BIN)/python benchmarks/diffraction_refine.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
