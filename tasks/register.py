"""Register trained PRMs in MLflow and load them back.

Every logged version is a pyfunc model (models from code, wrapping the save_pretrained folder) with alias
`challenger`, the newest candidate. The register stage here registers what a round trained and gates it. Loading
a version back (a folder, a `models:/` or a `runs:/` URI) and the model a round starts from: tasks/model_source.py;
which version is champion, and the gate that decides it: tasks/champion.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.pyfunc
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from actprm.errors import ActPRMError
from actprm.runlog import stage_logger
from tasks.champion import CHALLENGER, MODEL_NAME, promotion_gate, registry_client
from tasks.model_source import PRM_ARTIFACT, load_prm_dir, model_version_key

if TYPE_CHECKING:
    from tasks.evaluate import Evaluation

# The pyfunc's schema: one row per trajectory. `steps`, `step_scores` and `step_std` are JSON-encoded lists of
# strings / floats, because MLflow column schemas have no list-of-string type that every flavor
# and the REST scoring server accept alike.
PYFUNC_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "question"), ColSpec("string", "steps")]),
    outputs=Schema([ColSpec("string", "step_scores"), ColSpec("string", "step_std"), ColSpec("boolean", "uncertain"),
                    ColSpec("long", "truncated_steps")]),
)
# Token budget of the served model; unset: the backbone's whole context (tasks.score.inference_max_length).
SERVE_MAX_LENGTH_ENV = "ACTPRM_SERVE_MAX_LENGTH"


class PRMPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc around the ensemble PRM: rows of (question, steps JSON) -> step_scores and step_std (JSON),
    uncertain, truncated_steps.

    Scores are the mean over heads of P(step correct), step_std the heads' population std; steps past the token
    budget (env ACTPRM_SERVE_MAX_LENGTH, default the backbone's whole context) have no score and are counted in
    truncated_steps.
    """

    # The explicit PYFUNC_SIGNATURE is the schema; MLflow's type-hint validation (and its warning
    # that `predict` has no type hints) does not apply.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from tasks.score import inference_max_length

        self.model, self.tokenizer = load_prm_dir(context.artifacts[PRM_ARTIFACT])
        self.max_length = inference_max_length(self.model, int(os.environ.get(SERVE_MAX_LENGTH_ENV) or 0) or None)

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from tasks.score import score_steps

        trajectories = [{"question": str(q), "steps": json.loads(s) if isinstance(s, str) else list(s)}
                        for q, s in zip(model_input["question"], model_input["steps"])]
        scores = score_steps(self.model, self.tokenizer, trajectories, max_length=self.max_length)
        return pd.DataFrame({"step_scores": [json.dumps(s["step_scores"]) for s in scores],
                             "step_std": [json.dumps(s["step_std"]) for s in scores],
                             "uncertain": [bool(s["uncertain"]) for s in scores],
                             "truncated_steps": [int(s["truncated_steps"]) for s in scores]})


PYFUNC_SCRIPT = """import mlflow
from tasks.register import PRMPyfunc

mlflow.models.set_model(PRMPyfunc())
"""


def _pip_requirements() -> list[str]:
    # Pinned from the running environment: MLflow's inference would load the model in a subprocess.
    # The wrapper itself comes from this project, which must be installed where the model is served
    # (e.g. `mlflow models serve --env-manager local` from the project's venv).
    pkgs = ["torch", "transformers", "tokenizers", "safetensors", "mlflow", "pandas"]
    out = []
    for p in pkgs:
        try:
            out.append(f"{p}=={metadata.version(p)}")
        except metadata.PackageNotFoundError:
            pass
    return out


def log_model(model_dir: str | Path, run: mlflow.ActiveRun | str | None = None, *, name: str = MODEL_NAME,
              tags: dict[str, Any] | None = None, client: MlflowClient | None = None) -> int:
    """Log a save_pretrained folder as a pyfunc model, register it as `name`, alias it `challenger`.

    `run` is the MLflow run (or its id) to log under; by default the active run, else a new run
    named "register". Returns the new version number.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ActPRMError(f"model folder not found: {model_dir}")
    run_id = run if isinstance(run, str) else run.info.run_id if run is not None else None
    active = mlflow.active_run()
    if run_id is None and active is not None:
        run_id = active.info.run_id
    if active is not None and active.info.run_id == run_id:
        ctx = contextlib.nullcontext()
    else:
        ctx = mlflow.start_run(run_id=run_id, run_name=None if run_id else "register", nested=active is not None)
    with ctx, tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # Models from code (MLflow's recommended form): the logged model holds this tiny script
        # instead of a pickle, and imports the wrapper from the installed package when loaded.
        script = Path(tmp) / "actprm_pyfunc.py"
        script.write_text(PYFUNC_SCRIPT)
        # No input example on purpose: MLflow would run the model to validate it; the signature says it all.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(script),
            artifacts={PRM_ARTIFACT: str(model_dir)},
            signature=PYFUNC_SIGNATURE,
            pip_requirements=_pip_requirements(),
        )
        mv = mlflow.register_model(info.model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()})
    c = registry_client(client)
    c.set_registered_model_alias(name, CHALLENGER, mv.version)
    return int(mv.version)


@dataclass
class Registration:
    """A round's registered version and the promotion gate's decision on it."""
    version: int
    decision: str  # promoted | rejected
    model_version_key: str  # the key its scores are stored under (the next round scores with it)
    gate: dict[str, Any] = field(default_factory=dict)  # the gate's whole answer (tasks.champion.promotion_gate)

    def as_dict(self) -> dict[str, Any]:
        return {**self.gate, "model_version_key": self.model_version_key}


def register_round(settings, model_dir: str, evaluation: Evaluation, run_id: str | None = None) -> Registration:
    """Loop stage: register the trained model (alias challenger) and run the promotion gate.

    The gate compares F1s on the same evaluation set, against the champion of this round's pool
    (tasks/champion.py); when that champion was measured on another set (the pool's eval split has grown), it
    is re-evaluated on this round's pool and split.
    """
    from actprm.tracking import configure_mlflow

    configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    name = settings.registry.model_name
    tags = {"actprm.pool": evaluation.pool, "actprm.preset": settings.model.preset}
    # A retried flow run reopens its round's MLflow run (tasks.pipeline.open_run): the version that run
    # already registered is this round's model, so the retry gates it again instead of registering a copy.
    client = MlflowClient()
    earlier = client.search_model_versions(f"name='{name}' and run_id='{run_id}'") if run_id else []
    if earlier:
        version = min(int(v.version) for v in earlier)
    else:
        version = log_model(model_dir, run_id, name=name, tags={k: v for k, v in tags.items() if v is not None})
    reevaluate = None
    if evaluation.pool:
        def reevaluate(champion: int) -> float:
            from tasks.evaluate import evaluate_pool

            return evaluate_pool(settings.duckdb_path, evaluation.pool, f"models:/{name}/{champion}",
                                 split=evaluation.split, batch_size=settings.uncertainty.batch_size,
                                 max_length=settings.model.max_length)["f1"]
    # Scoped by pool: this round competes with its own pool's champion, never silently with another pool's.
    gate = promotion_gate(None, name, version, evaluation.f1, settings.registry.min_delta,
                          eval_set=evaluation.eval_set, reevaluate=reevaluate, scope=evaluation.pool)
    if run_id is not None:
        client.set_tag(run_id, "actprm.model_version", str(version))
        client.set_tag(run_id, "actprm.gate.decision", gate["decision"])
    stage_logger().info("register %s v%d: %s as champion of pool %s (%s); overall champion v%s", name, version,
                        gate["decision"], gate["scope"], gate["reason"], gate["champion"])
    return Registration(version=version, decision=gate["decision"], model_version_key=model_version_key(name, version),
                        gate=gate)
