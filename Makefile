# Keelson: the two commands in the README are `make lab` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
INV    ?= inventories/lab
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: lab test prereqs venv up down status converge lint unit molecule e2e bench clean

## lab: on a fresh machine, prepare it, build the lab and deploy site.yml onto it
lab: prereqs venv up converge

## test: the whole test suite (lint, unit, molecule, end-to-end); CI runs this
# Two pytest runs side by side: the end-to-end tests (in order, on the one
# lab) and lint + unit + Molecule (scripts/test.sh).
test: prereqs venv
	scripts/test.sh

prereqs:
	scripts/prereqs.sh

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Python 3.11+ is needed (set PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -c constraints.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

up: venv
	$(BIN)/keelson lab up -i $(INV)

down: venv
	$(BIN)/keelson lab down -i $(INV)

status: venv
	$(BIN)/keelson lab status -i $(INV)

converge: venv
	$(BIN)/ansible-playbook site.yml -i $(INV)

lint: venv
	$(BIN)/pytest -m lint

unit: venv
	$(BIN)/pytest tests/unit

molecule: venv
	$(BIN)/pytest -m molecule

e2e: venv
	$(BIN)/pytest -m e2e

bench: venv
	$(BIN)/python bench/converge/run.py

clean: down
	rm -rf $(VENV) .cache
