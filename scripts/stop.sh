#!/usr/bin/env bash
# `make stop`: stop the worker, the MLflow server and the Prefect server started by `make serve`
# (the process groups recorded in $ACTPRM_HOME/servers/*.pid, nothing else).
set -euo pipefail
cd "$(dirname "$0")/.."
export ACTPRM_HOME="${ACTPRM_HOME:-.actprm}"
exec .venv/bin/python -m actprm.servers down "$@"
