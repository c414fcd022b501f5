# Set-up and checks for caliban. Every target is idempotent.
#   make demo   - engine + base image + the tutorial sweep on real Docker
#   make test   - engine + base image + the whole test suite
#   make lint   - ruff and mypy
#   make bench  - the benchmarks in benchmarks/
#   make matrix - build the wheel, install and try it on every Python here

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test lint bench matrix venv docker base-image gate-helper clean-test-images

# Python 3.10+; the versions come from constraints.txt (scripts/update-constraints.py).
$(STAMP): pyproject.toml constraints.txt scripts/venv.sh
	@PYTHON='$(PYTHON)' scripts/venv.sh $(VENV)
	@touch $(STAMP)

venv: $(STAMP)

docker:
	@scripts/ensure-docker.sh

# The base image caliban builds FROM: the public python image when the
# registry is reachable, else one made locally from Debian packages.
base-image: docker
	@scripts/base-image.sh >/dev/null

# The static helper pre-warmed local sweeps start containers with (gcc and
# libc6-dev from Debian packages when root and missing).
gate-helper: venv
	@scripts/gate-helper.sh >/dev/null

demo: venv base-image
	@export CALIBAN_BASE_IMAGE="$${CALIBAN_BASE_IMAGE:-$$(scripts/base-image.sh)}"; \
	cd tutorials/basic && \
	../../$(BIN)/caliban run --experiment_config experiment.json train.py && \
	../../$(BIN)/caliban status --max_jobs 6

test: venv base-image gate-helper
	@export CALIBAN_BASE_IMAGE="$${CALIBAN_BASE_IMAGE:-$$(scripts/base-image.sh)}"; \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	@$(BIN)/ruff format --check caliban tests benchmarks tutorials
	@$(BIN)/ruff check caliban tests benchmarks tutorials
	@$(BIN)/mypy caliban tests benchmarks

bench: venv base-image gate-helper
	@export CALIBAN_BASE_IMAGE="$${CALIBAN_BASE_IMAGE:-$$(scripts/base-image.sh)}"; \
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

matrix:
	@scripts/install-matrix.sh
