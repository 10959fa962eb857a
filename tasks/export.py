"""Export a trained PRM as a self-contained Hugging Face folder with a model card (`actprm export`).

The folder itself is written by `models.hf_export`; this stage resolves which model is meant (a folder, a
`models:/` URI or an alias of the registered model), gathers how it was trained from MLflow (the registered
version, its run's parameters and evaluation metrics, the pool) and writes that into the model card.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from actprm.errors import ActPRMError


def model_reference(model: str | None, model_name: str) -> str:
    """A folder or an MLflow URI for `model`: a folder or `models:/`/`runs:/` URI as given, a bare name as an alias
    of the registered model (e.g. `champion` -> models:/actprm-prm@champion); no model means the champion."""
    if model is None:
        return f"models:/{model_name}@champion"
    if model.startswith(("models:/", "runs:/")) or Path(model).exists():
        return model
    if re.fullmatch(r"[A-Za-z][\w\-]*", model) and "/" not in model:
        return f"models:/{model_name}@{model}"
    raise ActPRMError(f"--model {model!r} is neither a folder, a models:/ URI nor an alias of {model_name}")


def describe_model(reference: str) -> dict[str, Any]:
    """Where a model came from: registered version, aliases, tags, its run's parameters and evaluation metrics.
    A plain folder has none of these."""
    info: dict[str, Any] = {"source": reference}
    if not reference.startswith("models:/"):
        return info
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    ref = reference[len("models:/"):]
    name, _, selector = ref.partition("@") if "@" in ref else ref.partition("/")
    try:
        mv = client.get_model_version_by_alias(name, selector) if "@" in ref else client.get_model_version(name, selector)
        info.update(name=name, version=int(mv.version), run_id=mv.run_id, aliases=list(mv.aliases or []),
                    tags=dict(mv.tags or {}), registered_at=mv.creation_timestamp)
        if mv.run_id:
            run = client.get_run(mv.run_id)
            info["params"] = dict(sorted(run.data.params.items()))
            info["metrics"] = dict(sorted(run.data.metrics.items()))
            info["pool"] = (mv.tags or {}).get("actprm.pool") or run.data.params.get("pool")
    except MlflowException as exc:
        raise ActPRMError(f"cannot resolve model {reference}: {str(exc).splitlines()[0]}") from None
    return info


USAGE = '''```python
from transformers import AutoModel, AutoTokenizer

model = AutoModel.from_pretrained("{path}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{path}", trust_remote_code=True)
[result] = model.score_steps(tokenizer, ["What is 12 + 30?"], [["12 + 30 = 42.", "The answer is 42."]])
result["step_scores"]  # per step: mean over the {heads} heads of P(step correct)
result["step_std"]     # per step: the heads' unbiased std (the ensemble's uncertainty)
result["uncertain"]    # the ActPRM rule (paper Sec. 3.2): a decisive step with std > {std} or mean in (1-{p}, {p})
```'''


def model_card(info: dict[str, Any], config, backbone_config: dict, folder_name: str) -> str:
    """README.md of the exported folder: what it is, how it was trained, its evaluation, how to call it."""
    lines = ["---", "library_name: transformers", "tags: [process-reward-model, actprm]", "---", "",
             f"# {info.get('name', 'ActPRM')} {('v' + str(info['version'])) if 'version' in info else ''}".rstrip(), "",
             ("An ensemble process reward model (PRM) trained with ActPRM, active learning for PRMs "
             "(Duan et al., 2025, arXiv 2504.10559): a shared backbone feeds "
             f"{config.num_heads} MLP heads read at the `{config.separator_token}` token that closes each step."), "",
             "## Model", "",
             (f"- backbone: {backbone_config.get('model_type')} (hidden {backbone_config.get('hidden_size')}, "
             f"{backbone_config.get('num_hidden_layers')} layers), from `{config.backbone_name}` (preset `{config.preset}`)"),
             (f"- heads: {config.num_heads} x (hidden -> {config.head_hidden} -> {config.head_hidden} -> 1), read "
             f"{'at the separator' if config.readout == 'separator' else 'as the mean of each step (step_mean)'}"),
             (f"- regularization: anchored ensemble, lambda {config.reg_lambda}; bootstrap probability "
             f"{config.learning_probability}; seed {config.seed}"), ""]
    lines += ["## Training", ""]
    if "version" in info:
        lines += [(f"- registered as `{info['name']}` version {info['version']} "
                  f"(aliases: {', '.join(info['aliases']) or 'none'}), MLflow run `{info['run_id']}`"),
                  f"- pool: `{info.get('pool') or 'unknown'}`"]
        params = {k: v for k, v in info.get("params", {}).items()}
        if params:
            lines += ["", "| parameter | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in params.items()]
    else:
        lines += [f"- exported from the folder `{info['source']}` (not a registered version: no run to cite)"]
    lines += ["", "## Evaluation", ""]
    metrics = {k: v for k, v in info.get("metrics", {}).items() if k.startswith(("eval", "f1"))}
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    else:
        lines += [("No evaluation was recorded with this model; run `actprm evaluate --model ...` on ProcessBench or "
                  "PRMBench.")]
    from models.uncertainty import P_THRESHOLD, STD_THRESHOLD

    lines += ["", "## How to call it", "",
              "Torch and transformers are all it needs (the modeling code ships in this folder):", "",
              USAGE.format(path=folder_name, heads=config.num_heads, std=STD_THRESHOLD, p=P_THRESHOLD), "",
              ("Steps are scored in the layout the model was trained on: the question (in the tokenizer's chat "
              "template when it has one), then each step followed by the separator. A trajectory longer than the "
              "backbone's position limit raises instead of being cut. For best-of-N, aggregate the step scores "
              "(the minimum over steps, as Math-Shepherd does; `actprm rerank` offers min, prod, last and mean)."), ""]
    return "\n".join(lines)


def export_model(model: str | None, out: str | Path, *, model_name: str, overwrite: bool = False) -> dict:
    """`actprm export`: write the self-contained folder for a folder, URI or alias; returns what was written."""
    from models.hf_export import export_hf
    from tasks.model_source import load_model

    reference = model_reference(model, model_name)
    info = describe_model(reference)
    # By number, not alias: the alias may move while we load.
    prm, tokenizer, version = load_model(f"models:/{info['name']}/{info['version']}" if "version" in info else reference)
    backbone = prm.backbone.config.to_dict()
    provenance = {k: info[k] for k in ("source", "name", "version", "run_id", "pool") if k in info}
    card = model_card(info, prm.config, backbone, Path(out).name)
    folder = export_hf(prm, tokenizer, out, model_card=card, provenance=provenance, overwrite=overwrite)
    return {"out": str(folder), "model": reference, "model_version": version,
            "files": sorted(p.name for p in folder.iterdir()), "num_heads": prm.config.num_heads,
            "summary": f"exported {reference} to {folder} ({json.dumps(sorted(p.name for p in folder.iterdir()))})"}
