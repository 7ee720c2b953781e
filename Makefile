# The two commands of the README: `make run` (the pipeline) and `make test` (the suite).
SHELL := /bin/bash
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
VENV := .venv/bin
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup run test test-ui lint format ui bench clean
setup:
	@./scripts/setup.sh

run: setup
	$(VENV)/dvc repro

test: setup lint
	$(VENV)/pytest -q -m "not ui"

# The MLflow UI in headless Chromium (Playwright; Debian's chromium): not part of `make test`.
test-ui: setup
	$(VENV)/pytest -q -m ui tests/test_ui.py

lint:
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

format: setup
	$(VENV)/ruff check --fix .
	$(VENV)/ruff format .

ui: setup
	$(VENV)/kdflow ui

bench: setup
	$(VENV)/python bench/speed.py
	$(VENV)/python bench/quality.py
	$(VENV)/python bench/pipeline.py

clean:
	rm -rf checkpoints cache
