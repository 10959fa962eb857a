"""Register trained PRMs in MLflow and decide which one is the champion.

Registry conventions (aliases only; MLflow's stages are deprecated):
- every logged version gets alias `challenger` (the newest candidate);
- alias `champion` is the model the pipeline serves and scores pools with;
- alias `previous-champion` and the registered-model tag `actprm.champion_history` (a JSON list,
  oldest first) remember earlier champions, so a promotion can be rolled back.

Version tags written here: `actprm.eval_f1` and `actprm.eval_set` (the F1 and the fixed evaluation
set it was measured on), `actprm.gate.decision` (promoted | rejected | manual),
`actprm.gate.champion_f1`, `actprm.gate.champion_version`, `actprm.gate.min_delta`.

Comparing F1s measured on different evaluation sets would be meaningless, so the gate refuses to
(clear error) unless it is given a `reevaluate` callback, in which case the champion is re-scored
on the challenger's evaluation set and its tags are updated to that set.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from actprm.errors import ActPRMError

MODEL_NAME = "actprm-prm"
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
HISTORY_TAG = "actprm.champion_history"
HISTORY_KEEP = 50
# Where the save_pretrained folder lives inside the logged pyfunc model.
PRM_ARTIFACT = "prm"

# The pyfunc's schema: one row per trajectory. `steps` and `step_scores` are JSON-encoded lists of
# strings / floats, because MLflow column schemas have no list-of-string type that every flavor
# and the REST scoring server accept alike.
PYFUNC_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "question"), ColSpec("string", "steps")]),
    outputs=Schema([ColSpec("string", "step_scores")]),
)


def load_prm_dir(path: str | Path, device: str | None = None):
    """(model, tokenizer) from a save_pretrained folder (the tokenizer is saved alongside)."""
    from models import EnsemblePRM

    return EnsemblePRM.from_pretrained(path, with_tokenizer=True, device=device)


class PRMPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc around the ensemble PRM: rows of (question, steps JSON) -> step_scores JSON.

    Scores are the mean over heads of P(step correct); steps past max_length (env
    ACTPRM_MODEL__MAX_LENGTH, default 512) have no score.
    """

    # The explicit PYFUNC_SIGNATURE is the schema; MLflow's type-hint validation (and its warning
    # that `predict` has no type hints) does not apply.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.model, self.tokenizer = load_prm_dir(context.artifacts[PRM_ARTIFACT])
        self.max_length = int(os.environ.get("ACTPRM_MODEL__MAX_LENGTH", "512"))

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from tasks.evaluate import predict_step_scores

        questions = [str(q) for q in model_input["question"]]
        steps = [json.loads(s) if isinstance(s, str) else list(s) for s in model_input["steps"]]
        scores = predict_step_scores(self.model, self.tokenizer, questions, steps, max_length=self.max_length)
        return pd.DataFrame({"step_scores": [json.dumps(s) for s in scores]})


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


def _client(client: MlflowClient | None) -> MlflowClient:
    return client or MlflowClient()


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
    c = _client(client)
    c.set_registered_model_alias(name, CHALLENGER, mv.version)
    return int(mv.version)


# -- champion bookkeeping ----------------------------------------------------------------------
def _alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def champion_version(name: str = MODEL_NAME, client: MlflowClient | None = None) -> int | None:
    """The champion's version number, or None when there is none (or no such registered model)."""
    return _alias_version(_client(client), name, CHAMPION)


def champion_history(client: MlflowClient, name: str) -> list[int]:
    """Earlier champions, oldest first."""
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG)
    return [int(v) for v in json.loads(raw)] if raw else []


def _set_champion(client: MlflowClient, name: str, version: int, history: list[int]) -> None:
    history = history[-HISTORY_KEEP:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    if history:
        client.set_registered_model_alias(name, PREVIOUS, str(history[-1]))
    else:
        try:
            client.delete_registered_model_alias(name, PREVIOUS)
        except MlflowException:
            pass
    client.set_registered_model_alias(name, CHAMPION, str(version))


def _require_version(client: MlflowClient, name: str, version: int) -> Any:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        try:
            known = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        except MlflowException:
            known = []
        raise ActPRMError(f"registered model {name!r} has no version {version} "
                          f"(versions: {', '.join(map(str, known)) or 'none'})") from None


GATE_ATTEMPTS = 3  # comparisons tried while someone else keeps moving the champion alias


def promotion_gate(client: MlflowClient | None, name: str, version: int, challenger_f1: float,
                   min_delta: float = 0.0, *, eval_set: str | None = None,
                   reevaluate: Callable[[int], float] | None = None) -> dict[str, Any]:
    """Move `champion` to `version` when its F1 >= champion F1 + min_delta (no champion: promote).

    Both F1s must come from the same evaluation set (`eval_set`, stored as version tag
    `actprm.eval_set`). If the champion's was measured elsewhere (or never), `reevaluate(version)`
    re-scores it on this set; without that callback the gate refuses with an ActPRMError.
    """
    client = _client(client)
    _require_version(client, name, version)
    tag = client.set_model_version_tag
    tag(name, str(version), "actprm.eval_f1", repr(float(challenger_f1)))
    if eval_set is not None:
        tag(name, str(version), "actprm.eval_set", eval_set)
    tag(name, str(version), "actprm.gate.min_delta", repr(float(min_delta)))

    # Re-scoring the champion takes minutes, and `actprm promote` may move the alias meanwhile: the comparison
    # is made again against whoever is champion once it ends, so a manual promotion or rollback is never undone
    # by a gate that compared with the champion it replaced. (MLflow has no compare-and-set on aliases; what is
    # left is the moment between this check and the write.)
    for _ in range(GATE_ATTEMPTS):
        current = _alias_version(client, name, CHAMPION)
        promoted, champion_f1, reason = _compare(client, name, version, current, challenger_f1, min_delta,
                                                 eval_set, reevaluate)
        if _alias_version(client, name, CHAMPION) == current:
            break
    else:
        raise ActPRMError(f"the champion of {name} changed {GATE_ATTEMPTS} times while the gate compared v{version} "
                          f"with it; run the gate again, or promote by hand with `actprm promote --version {version}`")

    tag(name, str(version), "actprm.gate.decision", "promoted" if promoted else "rejected")
    tag(name, str(version), "actprm.gate.champion_f1", "none" if champion_f1 is None else repr(champion_f1))
    tag(name, str(version), "actprm.gate.champion_version", "none" if current is None else str(current))
    if promoted and current != version:
        history = champion_history(client, name)
        _set_champion(client, name, version, history + ([current] if current is not None else []))
    return {"decision": "promoted" if promoted else "rejected", "version": version,
            "challenger_f1": float(challenger_f1), "champion_version": current, "champion_f1": champion_f1,
            "min_delta": float(min_delta), "eval_set": eval_set, "reason": reason}


def _compare(client: MlflowClient, name: str, version: int, current: int | None, challenger_f1: float,
             min_delta: float, eval_set: str | None,
             reevaluate: Callable[[int], float] | None) -> tuple[bool, float | None, str]:
    """(promote?, champion F1, reason) for challenger `version` against champion `current`."""
    if current is None:
        return True, None, "no champion yet"
    if current == version:
        return True, float(challenger_f1), "already the champion"
    champ_tags = client.get_model_version(name, str(current)).tags
    if "actprm.eval_f1" in champ_tags and champ_tags.get("actprm.eval_set") == eval_set:
        champion_f1 = float(champ_tags["actprm.eval_f1"])
    elif reevaluate is not None:
        champion_f1 = float(reevaluate(current))
        client.set_model_version_tag(name, str(current), "actprm.eval_f1", repr(champion_f1))
        if eval_set is not None:
            client.set_model_version_tag(name, str(current), "actprm.eval_set", eval_set)
    else:
        where = champ_tags.get("actprm.eval_set", "no recorded evaluation set")
        raise ActPRMError(
            f"cannot compare v{version} with champion v{current}: champion F1 was measured on {where}, "
            f"challenger on {eval_set or 'an unnamed set'}; re-evaluate the champion on the same set "
            f"or promote by hand with `actprm promote --version {version}`")
    promoted = challenger_f1 >= champion_f1 + min_delta
    return promoted, champion_f1, (f"F1 {challenger_f1:.4f} {'>=' if promoted else '<'} champion F1 "
                                   f"{champion_f1:.4f} + min_delta {min_delta:g}")


def promote(name: str = MODEL_NAME, version: int | None = None, rollback: bool = False,
            *, client: MlflowClient | None = None) -> dict[str, Any]:
    """By hand: `version=N` makes N the champion; `rollback=True` restores the previous champion."""
    client = _client(client)
    if (version is None) == (not rollback):
        raise ActPRMError("give exactly one of --version N or --rollback")
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise ActPRMError(f"no registered model named {name!r}; train and register a model first") from None
    current = _alias_version(client, name, CHAMPION)
    history = champion_history(client, name)
    if rollback:
        if not history:
            raise ActPRMError(f"{name} has no previous champion to roll back to")
        target = history.pop()
        _require_version(client, name, target)
        _set_champion(client, name, target, history)
        client.set_model_version_tag(name, str(target), "actprm.gate.decision", "rollback")
        return {"champion": target, "previous": current, "action": "rollback"}
    assert version is not None
    _require_version(client, name, version)
    if current != version:
        _set_champion(client, name, version, history + ([current] if current is not None else []))
    client.set_model_version_tag(name, str(version), "actprm.gate.decision", "manual")
    return {"champion": version, "previous": current, "action": "promote"}


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
        return _alias_version(client, mname, alias)
    return int(ref.split("/", 1)[1]) if ref.split("/", 1)[1].isdigit() else None


def resolve_model_dir(model_dir_or_uri: str | Path, client: MlflowClient | None = None) -> tuple[Path, int | None]:
    """The local save_pretrained folder behind a folder path or an MLflow model URI, and its version."""
    uri = str(model_dir_or_uri)
    if not uri.startswith(("models:/", "runs:/")):
        if not Path(uri).is_dir():
            raise ActPRMError(f"model folder not found: {uri}")
        return Path(uri), None
    client = _client(client)
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
    client = _client(client)
    version = _alias_version(client, name, alias)
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
    if model is not None:
        prm_dir, version = resolve_model_dir(model)
        if version is None:
            return str(prm_dir), _folder_key(prm_dir)
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


def register_round(settings, model_dir: str, evaluation: dict, run_id: str | None = None) -> dict:
    """Loop stage: register the trained model (alias challenger) and run the promotion gate.

    The gate compares F1s on the same evaluation set; when the champion was measured on another
    one (e.g. a different pool), it is re-evaluated on this round's pool and split.
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
    gate = promotion_gate(None, name, version, evaluation["f1"], settings.registry.min_delta,
                          eval_set=evaluation.get("eval_set"), reevaluate=reevaluate)
    if run_id is not None:
        client.set_tag(run_id, "actprm.model_version", str(version))
        client.set_tag(run_id, "actprm.gate.decision", gate["decision"])
    return {**gate, "model_version_key": model_version_key(name, version)}


@functools.cache
def _prefect_tasks() -> dict:
    """The thin Prefect wrappers, built lazily: importing Prefect is slow and most callers do not need it."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return {"starting_model_stage": task(name="starting-model", cache_policy=NO_CACHE)(starting_model),
            "register_stage": task(name="register", cache_policy=NO_CACHE)(register_round)}


def __getattr__(name: str):
    if name in ("starting_model_stage", "register_stage"):
        return _prefect_tasks()[name]
    raise AttributeError(name)
