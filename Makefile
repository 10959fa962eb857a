# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: run test test-fast lint venv serve stop bench clean

# The venv is rebuilt when the lock changes. torch first: `torch==2.13.0` takes the CPU wheel on disk;
# any other spec would pull several GB of CUDA packages.
.venv/.installed: requirements.lock pyproject.toml
	test -x $(PY) || python3.11 -m venv .venv
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

venv: .venv/.installed

run: .venv/.installed
	.venv/bin/actprm run

# The whole suite: what .ci/run runs. It never lints; `make lint` is its own step.
test: .venv/.installed
	$(PY) -m pytest

# The edit loop: unit and data tests only (no model training, no servers, no study).
test-fast: .venv/.installed
	$(PY) -m pytest tests/unit tests/data

# ruff, then the import-graph contracts (layers, no cycles, a standalone models/), both configured in pyproject.toml
# ([tool.ruff], [tool.importlinter]). PYTHONPATH=.: check this checkout, whichever one the venv's install points at.
lint: .venv/.installed
	$(PY) -m ruff check .
	PYTHONPATH=. .venv/bin/lint-imports --no-cache

serve: .venv/.installed
	bash scripts/serve.sh

stop:
	bash scripts/stop.sh

bench: .venv/.installed
	$(PY) bench/run_all.py

# Stops what `make serve` started first: its pid files are under .actprm, and without them `make stop` would
# leave the servers holding their ports.
clean:
	if [ -x .venv/bin/python ] && [ -d .actprm/servers ]; then bash scripts/stop.sh; fi
	rm -rf .actprm
