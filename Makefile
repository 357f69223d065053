# The two commands: `make repro` (the main job: dvc repro on params.yaml) and `make test` (the suite).
# Both set everything up on a fresh clone: .venv, the package, the dataset, the browser for tests.
SHELL := /bin/bash
# This Makefile's folder, for its scripts when it runs elsewhere (make -f)
HERE := $(patsubst %/,%,$(dir $(abspath $(firstword $(MAKEFILE_LIST)))))
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1
# Stages call `python` and `dvc`: make them the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test ui lint exps

# The package with the pipelines' and the tests' extras, at the exact versions of constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[pipelines,test]'
	touch $(STAMP)

setup: $(STAMP)
	@bash scripts/system-deps.sh data browser  # chromium: the report's thumbnails (kaleido)

repro: setup
	$(VENV)/bin/dvc repro

test: setup
	@bash scripts/system-deps.sh data browser postgres
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check lossviz pipelines tests benchmarks

# The MLflow UI on http://127.0.0.1:$(UI_PORT); Ctrl-C or SIGTERM stops all of its processes (scripts/mlflow-ui.sh).
# The checkout's own store is first pointed at this checkout, as a stage would after a `cp -a` or `mv`.
UI_PORT ?= 5000
CHECKOUT_STORE := sqlite:///$(CURDIR)/mlruns/mlflow.db
UI_STORE ?= $(CHECKOUT_STORE)
ui: setup
	$(if $(filter $(CHECKOUT_STORE),$(UI_STORE)),$(PY) $(HERE)/scripts/relocate_store.py $(CURDIR))
	bash $(HERE)/scripts/mlflow-ui.sh $(VENV)/bin/mlflow --backend-store-uri $(UI_STORE) --host 127.0.0.1 --port $(UI_PORT)

# The experiments (`dvc exp run`) side by side: the params and headline metrics that differ between them, without
# the dependencies' hashes (the columns named by a bare path, and user/: a metric or a param is named by a path only
# with a colon and its own name after it) and their creation times.
# `make exps ARGS=--no-pager` passes options on to `dvc exp show`.
EXPS_DROP := ^(?!.*:)(.*/.*|user|Created)$$
exps:
	$(VENV)/bin/dvc exp show --only-changed --drop '$(EXPS_DROP)' $(ARGS)
