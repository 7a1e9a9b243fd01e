# Entry points for a fresh Linux machine with Python 3.11 (see README.md):
#   make play   set up .venv and run the main job on the bundled defaults
#   make test   set up .venv and run the test suite
#   make check-image   build and run the GPU image with podman (docs/DEPLOY.md)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: play test lint bench check-image clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# A CPU build of torch where this machine has one on disk, so that the install below does
	# not pull a multi-GB CUDA build; elsewhere pip picks torch as pyproject.toml allows.
	$(BIN)/python -m pip install --quiet torch==2.13.0 || echo "torch 2.13.0 not available; continuing"
	$(BIN)/python -m pip install --quiet -e '.[train,server,client,dev]'
	touch $(STAMP)

# The main job: the game. Starts a local server with the bundled checkpoint and opens the
# window for two players (docs/CLIENT.md).
play: $(STAMP)
	$(BIN)/playmodel play

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/parse.py

# Builds Dockerfile.gpu on a stand-in base and runs it with podman (Debian 12, as root; long:
# docs/DEPLOY.md, "Checking the image without Docker or a GPU"). Not part of `make test`.
check-image:
	deploy/check-image.sh

clean-venv:
	rm -rf $(VENV)
