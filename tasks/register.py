"""Register trained PRMs in MLflow and load them back.

Every logged version is a pyfunc model (models from code, wrapping the save_pretrained folder) with alias
`challenger`, the newest candidate; a version is loaded back from a folder, a `models:/` or a `runs:/` URI. The
flow stages here start a round from the champion (or a fresh model) and register what it trained. Which version
is champion, and the gate that decides it: tasks/champion.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from actprm.errors import ActPRMError
from actprm.runlog import stage_logger
from tasks.champion import (CHALLENGER, CHAMPION, MODEL_NAME, alias_version, champion_version, promotion_gate,
                             registry_client)
# PRMPyfunc and SERVE_MAX_LENGTH_ENV stay importable from here: versions logged before the wrapper was shipped
# inside the model import it from this module.
from tasks.pyfunc_model import (INPUT_EXAMPLE, PRM_ARTIFACT, SERVE_MAX_LENGTH_ENV, SIGNATURE,  # noqa: F401
                                PRMPyfunc)

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


def load_prm_dir(path: str | Path, device: str | None = None):
    """(model, tokenizer) from a save_pretrained folder (the tokenizer is saved alongside), or any other PRM folder
    `models.hf_import` reads (an export, Qwen2.5-Math-PRM, a released ActPRM checkpoint)."""
    from models.hf_import import load_prm_folder

    return load_prm_folder(path, device=device)


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


# -- loading -----------------------------------------------------------------------------------
def _local_model_dir(uri: str, client: MlflowClient) -> str:
    """A local folder holding the logged pyfunc model for a `models:/` or `runs:/` URI."""
    try:
        if uri.startswith("models:/"):
            # A local artifact store needs no copy; anything else is downloaded.
            ref = uri[len("models:/"):]
            mname, _, sel = ref.partition("@") if "@" in ref else ref.partition("/")
            mv = (client.get_model_version_by_alias(mname, sel) if "@" in ref
                  else client.get_model_version(mname, sel))
            src = client.get_model_version_download_uri(mname, mv.version)
            if src.startswith("file://"):
                from urllib.parse import unquote, urlparse

                local = unquote(urlparse(src).path)
                if Path(local).is_dir():
                    return local
        return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tempfile.mkdtemp(prefix="actprm-model-"))
    except MlflowException as exc:
        raise ActPRMError(f"cannot resolve model {uri}: {str(exc).splitlines()[0]}") from None


def _uri_version(uri: str, client: MlflowClient) -> int | None:
    ref = uri[len("models:/"):] if uri.startswith("models:/") else None
    if ref is None:
        return None
    if "@" in ref:
        mname, alias = ref.split("@", 1)
        return alias_version(client, mname, alias)
    return int(ref.split("/", 1)[1]) if ref.split("/", 1)[1].isdigit() else None


def resolve_model_dir(model_dir_or_uri: str | Path, client: MlflowClient | None = None) -> tuple[Path, int | None]:
    """The local save_pretrained folder behind a folder path or an MLflow model URI, and its version."""
    uri = str(model_dir_or_uri)
    if not uri.startswith(("models:/", "runs:/")):
        if not Path(uri).is_dir():
            raise ActPRMError(f"model folder not found: {uri}")
        return Path(uri), None
    client = registry_client(client)
    local = Path(_local_model_dir(uri, client))
    try:
        # The pyfunc flavor records where its `prm` artifact (the save_pretrained folder) landed.
        flavor = mlflow.models.Model.load(str(local / "MLmodel")).flavors["python_function"]
        prm_dir = local / flavor["artifacts"][PRM_ARTIFACT]["path"]
    except (OSError, KeyError, MlflowException):
        prm_dir = None
    if prm_dir is None or not prm_dir.is_dir():
        raise ActPRMError(f"{uri} is not an ActPRM model (no artifacts/{PRM_ARTIFACT} folder)")
    return prm_dir, _uri_version(uri, client)


def load_model(model_dir_or_uri: str | Path, client: MlflowClient | None = None, *, device: str | None = None):
    """(model, tokenizer, version) from a save_pretrained folder or an MLflow model URI.

    Works offline (HF_HUB_OFFLINE=1): everything needed is in the folder / the local store.
    """
    prm_dir, version = resolve_model_dir(model_dir_or_uri, client)
    model, tokenizer = load_prm_dir(prm_dir, device=device)
    return model, tokenizer, version


def load_champion(name: str = MODEL_NAME, alias: str = CHAMPION, client: MlflowClient | None = None):
    """(model, tokenizer, version) of the model behind `models:/<name>@<alias>`."""
    client = registry_client(client)
    version = alias_version(client, name, alias)
    if version is None:
        raise ActPRMError(f"{name} has no {alias!r} yet: run the active-learning loop or "
                          f"`actprm promote --version N`")
    # By number, not alias: the alias may move while we load.
    model, tokenizer, _ = load_model(f"models:/{name}/{version}", client)
    return model, tokenizer, version


# -- stages (thin Prefect wrappers used by the flows) --------------------------------------------
def model_version_key(name: str, version: int) -> str:
    """The key scores are stored under for a registered version (the `scores.model_version` column)."""
    return f"{name}/v{version}"


def _folder_key(path: Path) -> str:
    # An unregistered folder is keyed by its files (name, size, mtime), so retraining in place
    # never reuses stale scores.
    files = sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in path.rglob("*") if p.is_file())
    return "dir:" + hashlib.sha256(json.dumps([str(path.resolve()), files]).encode()).hexdigest()[:16]


def starting_model(settings, model: str | None = None) -> tuple[str, str]:
    """(save_pretrained folder, model-version key) to start from: `model` if given, else the
    champion, else a fresh model of the configured preset (saved once under checkpoints/init)."""
    from actprm.tracking import configure_mlflow

    configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    name = settings.registry.model_name
    if model is None:
        version = champion_version(name)
        if version is not None:
            model = f"models:/{name}/{version}"
    if model is None and settings.model.init_from:
        model = settings.model.init_from
    if model is not None:
        prm_dir, version = resolve_model_dir(model)
        if version is None:
            return imported_folder(settings, prm_dir), _folder_key(prm_dir)
        registered = model[len("models:/"):].split("@")[0].split("/")[0]
        return str(prm_dir), model_version_key(registered, version)
    m = settings.model
    key = f"init:{m.preset}:h{m.num_heads}:s{settings.train.seed}"
    if m.backbone_path:
        key += ":" + hashlib.sha256(m.backbone_path.encode()).hexdigest()[:8]
    target = settings.checkpoints_dir / "init" / key.replace(":", "-")
    if not (target / "prm_config.json").is_file():
        from models import build_prm

        prm, tokenizer = build_prm(m.preset, num_heads=m.num_heads, seed=settings.train.seed,
                                   reg_lambda=m.reg_lambda, learning_probability=m.learning_probability,
                                   freeze_backbone=m.freeze_backbone, backbone_path=m.backbone_path)
        # Write next to the target and rename, so an interrupted save is never mistaken for a model.
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".init-", dir=target.parent))
        prm.save_pretrained(tmp, tokenizer)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return str(target), key


def imported_folder(settings, folder: Path) -> str:
    """A save_pretrained folder for `folder`: itself, or (for another PRM layout: an export, Qwen2.5-Math-PRM, a
    released ActPRM) its conversion, made once under checkpoints/init and reused while the folder is unchanged.
    A Qwen2.5-Math-PRM start gets new heads shaped by the model and train settings."""
    from models.hf_import import detect_layout, import_prm

    layout = detect_layout(folder)
    if layout == "actprm":
        return str(folder)
    m = settings.model
    target = settings.checkpoints_dir / "init" / f"import-{layout}-{_folder_key(folder)[4:]}-h{m.num_heads}-s{settings.train.seed}"
    if not (target / "prm_config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=target.parent))
        import_prm(folder, tmp, num_heads=m.num_heads, seed=settings.train.seed, reg_lambda=m.reg_lambda,
                   learning_probability=m.learning_probability)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return str(target)


def register_round(settings, model_dir: str, evaluation: dict, run_id: str | None = None) -> dict:
    """Loop stage: register the trained model (alias challenger) and run the promotion gate.

    The gate compares F1s on the same evaluation set, against the champion of this round's pool
    (tasks/champion.py); when that champion was measured on another set (the pool's eval split has grown), it
    is re-evaluated on this round's pool and split.
    """
    from actprm.tracking import configure_mlflow

    configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    name = settings.registry.model_name
    tags = {"actprm.pool": evaluation.get("pool"), "actprm.preset": settings.model.preset}
    # A retried flow run reopens its round's MLflow run (tasks.pipeline.open_run_task): the version that run
    # already registered is this round's model, so the retry gates it again instead of registering a copy.
    client = MlflowClient()
    earlier = client.search_model_versions(f"name='{name}' and run_id='{run_id}'") if run_id else []
    if earlier:
        version = min(int(v.version) for v in earlier)
    else:
        version = log_model(model_dir, run_id, name=name, tags={k: v for k, v in tags.items() if v is not None})
    reevaluate = None
    if evaluation.get("pool"):
        def reevaluate(champion: int) -> float:
            from tasks.evaluate import evaluate_pool

            return evaluate_pool(settings.duckdb_path, evaluation["pool"], f"models:/{name}/{champion}",
                                 split=evaluation.get("split", "eval"), batch_size=settings.uncertainty.batch_size,
                                 max_length=settings.model.max_length)["f1"]
    # Scoped by pool: this round competes with its own pool's champion, never silently with another pool's.
    gate = promotion_gate(None, name, version, evaluation["f1"], settings.registry.min_delta,
                          eval_set=evaluation.get("eval_set"), reevaluate=reevaluate, scope=evaluation.get("pool"))
    if run_id is not None:
        client.set_tag(run_id, "actprm.model_version", str(version))
        client.set_tag(run_id, "actprm.gate.decision", gate["decision"])
    stage_logger().info("register %s v%d: %s as champion of pool %s (%s); overall champion v%s", name, version,
                        gate["decision"], gate["scope"], gate["reason"], gate["champion"])
    return {**gate, "model_version_key": model_version_key(name, version)}
