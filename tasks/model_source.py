"""Where a stage's model comes from: a save_pretrained folder, a `models:/` or `runs:/` URI of a registered
version, the champion, or a fresh model of the configured preset, loaded back as (model, tokenizer, version).

Below every stage that loads a model (score, evaluate, register, export, predict, the loop's bookkeeping), so none
of them imports another stage to get one. Registering versions: tasks/register.py; which is champion:
tasks/champion.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from actprm.errors import ActPRMError
from tasks.champion import CHAMPION, MODEL_NAME, alias_version, champion_version, registry_client
from tasks.pyfunc_model import PRM_ARTIFACT  # where the save_pretrained folder lives inside a logged version


def load_prm_dir(path: str | Path, device: str | None = None):
    """(model, tokenizer) from a save_pretrained folder (the tokenizer is saved alongside), or any other PRM folder
    `models.hf_import` reads (an export, Qwen2.5-Math-PRM, a released ActPRM checkpoint)."""
    from models.hf_import import load_prm_folder

    return load_prm_folder(path, device=device)


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


# -- the model a stage starts from ----------------------------------------------------------------
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


