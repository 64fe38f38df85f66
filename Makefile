# The two commands of the README: `make run` (service on the embedded default) and `make test`; CI also runs
# `make compose-test` (the Docker images built and the compose stack run: docs/self-hosting.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch lies on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup run lint test soak compose-test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q '$(TORCH_PIN)'
	$(BIN)/python -m pip install -q -e '.[worker,test,trackers]'
	touch $(STAMP)

run: setup
	$(BIN)/mambaft serve --host 127.0.0.1 --port 8000 --data-dir ./var

# Lint and the formatter's check run before the tests, so style never reaches a review.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q -m "not soak" --durations=25

soak: setup
	$(BIN)/python -m pytest -q -m soak

# Needs root and no virtualenv: it installs Docker if missing and tears down all it started.
compose-test:
	deploy/compose-test/run.sh

clean:
	rm -rf $(VENV) var .pytest_cache
