"""MLflow setup shared by the CLI, the flows and the register stage.

The default store is SQLite under ACTPRM_HOME. With a database store MLflow would put artifacts
in ./mlruns of whatever directory the process runs from, so the experiment is created with an
explicit artifact location under the project's home instead.

Through a tracking server (an http(s) tracking URI) the server picks the location: `mlflow-artifacts:/<id>` under
`make serve` (`--serve-artifacts`), so a GPU node or a laptop pointed at the server uploads its artifacts through
the server instead of writing them to its own disk. `make serve` and `make run` share one SQLite store, so a
process tracking that store directly reads and writes `mlflow-artifacts:` locations in the directory the server
serves them from (the same `<home>/mlartifacts`).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow.tracking import MlflowClient

# MLflow refuses param values longer than this (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
MAX_PARAM_CHARS = 6000
_SECRET_KEY = re.compile(r"(api_key|secret|password)", re.IGNORECASE)
_BAD_KEY_CHARS = re.compile(r"[^\w\-. /]")


def configure_mlflow(tracking_uri: str, experiment: str, artifact_root: str | Path | None = None) -> str:
    """Point MLflow (tracking and registry) at `tracking_uri` and select `experiment`; returns its id.

    A new experiment gets `artifact_root/<experiment>` as artifact location when given (needed for
    a local SQLite store); an existing experiment keeps the location it was created with.
    """
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    served = is_tracking_server(tracking_uri)
    if artifact_root is not None and not served:
        serve_proxied_artifacts_from(artifact_root)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = None
        if artifact_root is not None and not served:
            root = Path(artifact_root).resolve() / experiment
            root.mkdir(parents=True, exist_ok=True)
            location = root.as_uri()
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    else:
        experiment_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def is_tracking_server(tracking_uri: str) -> bool:
    return tracking_uri.split(":", 1)[0].lower() in ("http", "https")


_PROXIED_ROOT: list[Path] = []  # where this process reads/writes `mlflow-artifacts:` without a server


def serve_proxied_artifacts_from(artifact_root: str | Path) -> None:
    """Resolve `mlflow-artifacts:/<path>` to `<artifact_root>/<path>` whenever the tracking URI is not a server (the
    server itself maps it to its `--artifacts-destination`, which `make serve` sets to the same folder); through a
    server it stays MLflow's proxied upload. Without this, `make run` after `make serve` fails to log any artifact
    ("the tracking URI must be a valid http or https URI")."""
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    first = not _PROXIED_ROOT
    _PROXIED_ROOT[:] = [Path(artifact_root).resolve()]
    if not first:
        return

    def repository(artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
        if is_tracking_server(tracking_uri or mlflow.get_tracking_uri()):
            return MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
        path = urlparse(artifact_uri).path.lstrip("/")
        return LocalArtifactRepository((_PROXIED_ROOT[0] / path).as_uri(), tracking_uri=tracking_uri,
                                       registry_uri=registry_uri)

    _artifact_repository_registry.register("mlflow-artifacts", repository)


def prefect_flow_run_id() -> str | None:
    """The id of the Prefect flow run we are inside, if any (links an MLflow run back to its flow)."""
    # Inside a flow run Prefect is already imported; outside one, importing it (seconds) is wasted.
    if "prefect" not in sys.modules:
        return None
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


@contextlib.contextmanager
def start_run(name: str, tags: Mapping[str, Any] | None = None, *, nested: bool = False) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run tagged with `prefect.flow_run_id` when started inside a Prefect flow run."""
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    flow_run_id = prefect_flow_run_id()
    if flow_run_id:
        all_tags["prefect.flow_run_id"] = flow_run_id
    with mlflow.start_run(run_name=name, tags=all_tags, nested=nested) as run:
        yield run


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings -> flat `a.b` keys with string values MLflow accepts; secrets are redacted."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = _BAD_KEY_CHARS.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{name}."))
            continue
        text = "***" if _SECRET_KEY.search(name) and value is not None else str(value)
        if len(text) > MAX_PARAM_CHARS:
            text = text[: MAX_PARAM_CHARS - 3] + "..."
        out[name] = text
    return out


def log_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Log a (nested) dict of params to the active run, stringified and truncated; returns what was logged."""
    flat = flatten_params(params)
    items = list(flat.items())
    # log_params sends batches; MLflow caps a batch at 100 params.
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start:start + 100]))
    return flat


@contextlib.contextmanager
def logging_into(run_id: str | None, tracking_uri: str | None = None) -> Iterator[mlflow.ActiveRun | None]:
    """Make `run_id` the active MLflow run for the duration (no-op when None).

    Flows create runs by id and hand the id to each stage, because Prefect may run a task in
    another thread than the flow, and MLflow's active run is per thread.
    """
    if run_id is None:
        yield None
        return
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield active
        return
    # MLflow refuses to resume a run while the process has another experiment selected (a study, say, logged into
    # its own experiment in the same process first), so select the run's.
    mlflow.set_experiment(experiment_id=mlflow.get_run(run_id).info.experiment_id)
    # Resuming a run must not end it: the flow closes it when the round is over.
    run = mlflow.start_run(run_id=run_id, nested=active is not None)
    try:
        yield run
    finally:
        # end_run() would mark it FINISHED; pop it from the active stack but keep it RUNNING.
        mlflow.end_run(status="RUNNING")
