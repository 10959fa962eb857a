#!/usr/bin/env bash
# `make serve`: start the local orchestration stack in the background and wait until it is healthy:
#   Prefect server + UI   http://127.0.0.1:4200   (SQLite under $ACTPRM_HOME/prefect)
#   MLflow server + UI    http://127.0.0.1:5000   (SQLite $ACTPRM_HOME/mlflow.db, artifacts $ACTPRM_HOME/mlartifacts)
#   work pool `actprm-process` (concurrency 1), `prefect deploy --all` (prefect.yaml), one process worker.
# Logs and pid files: $ACTPRM_HOME/servers/. Stop everything with `make stop`.
# Ports: PREFECT_SERVER_API_PORT / MLFLOW_PORT, or flags: scripts/serve.sh --prefect-port 4300 --mlflow-port 5100.
# The work lives in actprm/servers.py, which the integration test (tests/integration/test_servers.py) drives too.
set -euo pipefail
cd "$(dirname "$0")/.."
export ACTPRM_HOME="${ACTPRM_HOME:-.actprm}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true
if [[ ! -x .venv/bin/python ]]; then
  echo "error: .venv is missing; run \`make venv\` first" >&2
  exit 1
fi
exec .venv/bin/python -m actprm.servers up "$@"
