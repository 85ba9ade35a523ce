# Quick start: `make demo` runs the main demo, `make test` runs the test suite.
# Both create .venv and install equipoise into it on first use, and assemble the monomer library
# (restraints for equipoise.xtal) from registry packages: Debian's refmac-dictionary and the
# ccp4i2 wheel's basic library (see src/equipoise/xtal/monlib.py).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

REFMAC_MONOMERS := /usr/share/refmac/monomers

$(BIN)/equipoise: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/equipoise

.PHONY: install monlib demo test test-slow bench clean
install: $(BIN)/equipoise monlib

# idempotent: a complete library is left as it is
monlib: $(BIN)/equipoise
	@test -f $(REFMAC_MONOMERS)/a/ALA.cif || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq refmac-dictionary >/dev/null; }
	$(BIN)/python -m equipoise.xtal.monlib install

demo: install
	$(BIN)/equipoise diffraction demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	for f in benchmarks/[a-z]*.py; do case $$f in */fit_timing.py) continue;; esac; \
	    echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
