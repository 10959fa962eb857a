"""Register trained PRMs in MLflow and load them back.

Every logged version is a pyfunc model (models from code, wrapping the save_pretrained folder) with alias
`challenger`, the newest candidate. The register stage here registers what a round trained and gates it. Loading
a version back (a folder, a `models:/` or a `runs:/` URI) and the model a round starts from: tasks/model_source.py;
which version is champion, and the gate that decides it: tasks/champion.py.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.tracking import MlflowClient

from actprm.errors import ActPRMError
from actprm.runlog import stage_logger
from tasks.champion import CHALLENGER, MODEL_NAME, promotion_gate, registry_client
from tasks.model_source import model_version_key
# PRMPyfunc and SERVE_MAX_LENGTH_ENV stay importable from here: versions logged before the wrapper was shipped
# inside the model import it from this module.
from tasks.pyfunc_model import (INPUT_EXAMPLE, PRM_ARTIFACT, SERVE_MAX_LENGTH_ENV, SIGNATURE,  # noqa: F401
                                PRMPyfunc)

if TYPE_CHECKING:
    from tasks.evaluate import Evaluation

# The models-from-code script MLflow stores as the model: it imports the wrapper shipped in the model's code/
# folder. MLflow also runs it once while logging, in this process, where that folder is not on sys.path yet.
PYFUNC_SCRIPT = """import mlflow

try:
    from pyfunc_model import PRMPyfunc
except ImportError:
    from tasks.pyfunc_model import PRMPyfunc

mlflow.models.set_model(PRMPyfunc())
"""
MODEL_DESCRIPTION = ("ActPRM process reward model (Duan et al., 2025, arXiv 2504.10559): an ensemble of heads on a "
                     "shared backbone scores every step of a trajectory. Input rows: question (string), steps (list "
                     "of strings). Output: step_scores (mean over heads of P(step correct)), step_std (the heads' "
                     "std), uncertain (the ActPRM rule), truncated_steps (steps past the token budget, unscored). "
                     "Self-contained: mlflow.pyfunc.load_model works wherever its pip requirements are installed.")


def _pyfunc_code_paths() -> list[str]:
    """The wrapper and the package it imports (models/: torch, transformers, tokenizers, safetensors only), shipped
    inside every logged version, so it loads and predicts without this project installed."""
    import models
    from tasks import pyfunc_model

    return [pyfunc_model.__file__, str(Path(models.__file__).parent)]


def _pip_requirements() -> list[str]:
    # Pinned from the running environment: what the wrapper and models/ import (mlflow-skinny suffices to load it).
    pkgs = ["torch", "transformers", "tokenizers", "safetensors", "mlflow", "pandas"]
    out = []
    for p in pkgs:
        try:
            out.append(f"{p}=={metadata.version(p)}")
        except metadata.PackageNotFoundError:
            pass
    return out


def _version_description(model_dir: Path, tags: dict[str, Any]) -> str:
    try:
        config = json.loads((model_dir / "prm_config.json").read_text())
    except (OSError, ValueError):
        config = {}
    parts = [f"{k}={config[k]}" for k in ("preset", "backbone_name", "num_heads") if config.get(k) not in (None, "")]
    parts += [f"{k.removeprefix('actprm.')}={v}" for k, v in tags.items()]
    return "ActPRM PRM" + (f" ({', '.join(parts)})" if parts else "") + "; rows of question + steps in, per-step scores out."


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
    tags = {k: str(v) for k, v in (tags or {}).items()}
    sys_path = list(sys.path)
    with ctx, tempfile.TemporaryDirectory() as tmp:
        # Models from code (MLflow's recommended form): the logged model holds this tiny script instead of a
        # pickle; the wrapper and models/ come along as code_paths.
        script = Path(tmp) / "actprm_pyfunc.py"
        script.write_text(PYFUNC_SCRIPT)
        try:
            # With an input example MLflow loads the logged model once and predicts it, to check the example
            # serves (a warning if not; one more load of the model per version); that load puts the model's code/
            # folder first on sys.path, undone below.
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(script),
                artifacts={PRM_ARTIFACT: str(model_dir)},
                code_paths=_pyfunc_code_paths(),
                signature=SIGNATURE,
                input_example=pd.DataFrame(INPUT_EXAMPLE),
                pip_requirements=_pip_requirements(),
            )
        finally:
            sys.path[:] = sys_path
            sys.modules.pop("pyfunc_model", None)  # that load's copy of the wrapper, from a folder now gone
        mv = mlflow.register_model(info.model_uri, name, tags=tags)
    c = registry_client(client)
    c.update_model_version(name, mv.version, description=_version_description(model_dir, tags))
    if not c.get_registered_model(name).description:  # never overwrite one a user wrote
        c.update_registered_model(name, description=MODEL_DESCRIPTION)
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
