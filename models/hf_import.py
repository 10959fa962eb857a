"""Load an ensemble PRM from any PRM folder this project knows, without running the folder's own code.

Layouts (`detect_layout`):
- ``actprm``: this project's save_pretrained folder (prm_config.json, heads.safetensors, backbone/).
- ``actprm-export``: a folder written by `models.hf_export` (config.json of an ``ActPRMForStepScoring``).
- ``qwen2.5-math-prm``: Qwen2.5-Math-PRM (``Qwen2ForProcessRewardModel``; Zhang et al., 2025, arXiv 2501.07301):
  a Qwen2 backbone under ``model.`` and a 2-class head ``score.0`` (H -> H), ReLU, ``score.2`` (H -> 2), read at
  the ``<extra_0>`` that closes each step (P(step correct) = softmax(...)[1]). The backbone is kept and the
  ensemble heads are new, as the paper did when it started from Qwen2.5-Math-PRM-7B (Duan et al., 2025, Sec. 4).
- ``actprm-release``: the paper's released checkpoints (``Qwen2ForEnsemblePRM`` of github.com/sail-sg/ActivePRM):
  a Qwen2 backbone under ``model.`` and ``num_ensemble`` heads ``score.model.{nn1,nn2,nn_out}.{weight,bias}``
  (weights (E, in, out), biases (E, out); ReLU; sigmoid at the ``rr_token``), with their anchors under
  ``score.reg_model.``. Heads and anchors load as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.errors import ModelError
from models.prm import CONFIG_FILE, HEAD_PARAMS, EnsemblePRM, PRMConfig, _quiet_hf

LAYOUTS = ("actprm", "actprm-export", "qwen2.5-math-prm", "actprm-release")
# Config keys of a Qwen2 PRM folder that are not the Qwen2 backbone's.
_NOT_BACKBONE = ("architectures", "auto_map", "num_ensemble", "learning_probability", "regularization_lambda",
                 "rr_token", "rr_token_id", "problem_type", "_name_or_path", "transformers_version")
# The released ActPRM heads' parameter names, in the order of HEAD_PARAMS.
RELEASE_HEADS = ("nn1.weight", "nn1.bias", "nn2.weight", "nn2.bias", "nn_out.weight", "nn_out.bias")


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{folder}: cannot read config.json ({exc})") from None


def detect_layout(folder: str | Path) -> str:
    d = Path(folder)
    if not d.is_dir():
        raise ModelError(f"model folder not found: {d}")
    if (d / CONFIG_FILE).is_file():
        return "actprm"
    if not (d / "config.json").is_file():
        raise ModelError(f"{d} is not a PRM folder: no {CONFIG_FILE} (ActPRM) or config.json (Hugging Face)")
    cfg = _config(d)
    arch = " ".join(cfg.get("architectures") or [])
    if "ActPRMForStepScoring" in arch:
        return "actprm-export"
    if "Qwen2ForProcessRewardModel" in arch:
        return "qwen2.5-math-prm"
    if "Qwen2ForEnsemblePRM" in arch or "num_ensemble" in cfg:
        return "actprm-release"
    raise ModelError(f"{d}: unsupported PRM architecture {arch or cfg.get('model_type')!r}; supported: ActPRM "
                      "folders, ActPRM exports, Qwen2ForProcessRewardModel (Qwen2.5-Math-PRM), Qwen2ForEnsemblePRM")


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise ModelError(f"{folder}: no model.safetensors (or its index); only safetensors checkpoints are read")


def read_tensors(folder: Path, prefix: str, names: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors whose names start with `prefix` (prefix removed; only `names` when given), from
    every shard."""
    from safetensors import safe_open

    out = {}
    for f in _weight_files(folder):
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                if key.startswith(prefix) and (names is None or key[len(prefix):] in names):
                    out[key[len(prefix):]] = fh.get_tensor(key)
    return out


def load_tokenizer(folder: Path):
    """The folder's tokenizer as its tokenizer_config.json names it, never running the folder's code. (AutoTokenizer
    would pick the class from config.json's model_type instead, e.g. Qwen2's byte-level tokenizer for any qwen2
    folder, whatever tokenizer.json holds.)"""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        named = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, json.JSONDecodeError):
        named = None
    try:
        if named in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(folder)
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{folder}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from None


def _qwen_backbone(folder: Path, cfg: dict, dtype):
    from transformers import Qwen2Config, Qwen2Model

    config = Qwen2Config(**{k: v for k, v in cfg.items() if k not in _NOT_BACKBONE})
    with _quiet_hf():
        # Qwen2's base_model_prefix is "model": the backbone's weights load by name, the head's are left out.
        return Qwen2Model.from_pretrained(folder, config=config, dtype=dtype or config.dtype or torch.float32)


def _with_heads(backbone, tokenizer, config: PRMConfig, heads: dict[str, torch.Tensor] | None) -> EnsemblePRM:
    from models.layout import ensure_separator

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config.separator_id = ensure_separator(tokenizer, backbone)
    model = EnsemblePRM(backbone, config)
    if heads:
        with torch.no_grad():
            for name, value in heads.items():
                target = getattr(model, name)
                if value.numel() != target.numel():
                    raise ModelError(f"head tensor {name} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
                target.copy_(value.reshape(target.shape).float())
    return model


def load_prm_folder(folder: str | Path, *, device: str | None = None, num_heads: int = 32, seed: int = 0,
                    reg_lambda: float = 0.5, learning_probability: float = 1.0, dtype: torch.dtype | None = None):
    """(EnsemblePRM in eval mode, tokenizer) from a folder in any of LAYOUTS. `num_heads` .. `learning_probability`
    only shape the new heads of a Qwen2.5-Math-PRM import."""
    d = Path(folder)
    layout = detect_layout(d)
    if layout == "actprm":
        return EnsemblePRM.from_pretrained(d, with_tokenizer=True, device=device)
    cfg = _config(d)
    tokenizer = load_tokenizer(d)
    if layout == "actprm-export":
        from transformers import AutoConfig, AutoModel

        settings = dict(cfg["backbone_config"])
        backbone = AutoModel.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings))
        state = read_tensors(d, "backbone.")
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        if unexpected or any(not k.endswith("position_ids") for k in missing):
            raise ModelError(f"{d}: backbone weights do not match its config (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
        heads = read_tensors(d, "", HEAD_PARAMS + tuple(f"anchor_{n}" for n in HEAD_PARAMS))
        prov = cfg.get("actprm", {})
        config = PRMConfig(num_heads=cfg["num_heads"], head_hidden=cfg["head_hidden"],
                           reg_lambda=prov.get("reg_lambda", reg_lambda),
                           learning_probability=prov.get("learning_probability", learning_probability),
                           seed=prov.get("seed", seed), separator_token=cfg["separator_token"],
                           preset=prov.get("preset", ""), backbone_name=prov.get("backbone_name", str(d)),
                           readout=cfg.get("readout", "separator"), prefix_end_id=cfg.get("prefix_end_id", -1))
        model = _with_heads(backbone, tokenizer, config, heads)
    elif layout == "qwen2.5-math-prm":
        backbone = _qwen_backbone(d, cfg, dtype)
        config = PRMConfig(num_heads=num_heads, reg_lambda=reg_lambda, learning_probability=learning_probability,
                           seed=seed, preset=layout, backbone_name=str(d))
        model = _with_heads(backbone, tokenizer, config, None)
    else:  # actprm-release
        backbone = _qwen_backbone(d, cfg, dtype)
        score = read_tensors(d, "score.")
        heads, anchors = {}, {}
        for ours, theirs in zip(HEAD_PARAMS, RELEASE_HEADS):
            if f"model.{theirs}" not in score:
                raise ModelError(f"{d}: released ActPRM checkpoint lacks score.model.{theirs}")
            heads[ours] = score[f"model.{theirs}"]
            # Anchors: the frozen copy of the initial heads (score.reg_model); without it, the heads themselves.
            anchors[f"anchor_{ours}"] = score.get(f"reg_model.{theirs}", heads[ours])
        e, _, k = heads["w1"].shape
        config = PRMConfig(num_heads=int(cfg.get("num_ensemble", e)), head_hidden=int(k),
                           reg_lambda=float(cfg.get("regularization_lambda", reg_lambda)),
                           learning_probability=float(cfg.get("learning_probability", learning_probability)),
                           seed=seed, separator_token=cfg.get("rr_token") or "<extra_0>", preset=layout,
                           backbone_name=str(d))
        model = _with_heads(backbone, tokenizer, config, heads | anchors)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def import_prm(folder: str | Path, out_dir: str | Path, **kwargs) -> dict:
    """Convert any supported PRM folder into this project's save_pretrained folder (for `--model`, training)."""
    layout = detect_layout(folder)
    model, tokenizer = load_prm_folder(folder, **kwargs)
    model.save_pretrained(out_dir, tokenizer)
    return {"layout": layout, "out": str(out_dir), "num_heads": model.config.num_heads,
            "heads": "new" if layout == "qwen2.5-math-prm" else "loaded"}
