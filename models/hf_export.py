"""Export the ensemble PRM as a self-contained Hugging Face folder.

The folder loads with ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` in any process that has torch
and transformers, without this project: ``config.json`` (an ``ActPRMConfig`` with ``auto_map``), the modeling code
``modeling_actprm.py`` (a copy of `models/hf/modeling_actprm.py`, which imports only torch and transformers),
``model.safetensors`` (backbone under ``backbone.``, the heads ``w1 .. b3`` and their anchors ``anchor_w1 ..``),
the tokenizer, and a model card ``README.md`` written by the caller.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from models.errors import ModelError
from models.layout import SYSTEM_PROMPT
from models.prm import HEAD_PARAMS, EnsemblePRM, _quiet_hf
from models.uncertainty import P_THRESHOLD, STD_THRESHOLD

MODELING_FILE = Path(__file__).parent / "hf" / "modeling_actprm.py"
WEIGHTS_FILE = "model.safetensors"
ARCHITECTURE = "ActPRMForStepScoring"
AUTO_MAP = {"AutoConfig": "modeling_actprm.ActPRMConfig", "AutoModel": f"modeling_actprm.{ARCHITECTURE}"}
# Backbone config keys that describe a saved folder, not the network.
_BACKBONE_DROP = ("architectures", "auto_map", "_name_or_path", "transformers_version")


def export_state_dict(model: EnsemblePRM) -> dict[str, torch.Tensor]:
    """The exported weights: the backbone under `backbone.`, heads and anchors by their own names."""
    state = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    state |= {n: getattr(model, n) for n in HEAD_PARAMS}
    state |= {f"anchor_{n}": getattr(model, f"anchor_{n}") for n in HEAD_PARAMS}
    # Own, contiguous CPU copies: safetensors refuses tensors that share memory (tied embeddings).
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def hf_config(model: EnsemblePRM, provenance: dict | None = None):
    from models.hf.modeling_actprm import ActPRMConfig

    backbone = {k: v for k, v in model.backbone.config.to_dict().items() if k not in _BACKBONE_DROP}
    c = model.config
    return ActPRMConfig(
        backbone_config=backbone, num_heads=c.num_heads, head_hidden=c.head_hidden,
        separator_token=c.separator_token, separator_id=c.separator_id, readout=c.readout,
        prefix_end_id=c.prefix_end_id, p_threshold=P_THRESHOLD, std_threshold=STD_THRESHOLD,
        system_prompt=SYSTEM_PROMPT, architectures=[ARCHITECTURE], auto_map=AUTO_MAP,
        actprm={"preset": c.preset, "backbone_name": c.backbone_name, "reg_lambda": c.reg_lambda,
                "learning_probability": c.learning_probability, "seed": c.seed, **(provenance or {})},
    )


def export_hf(model: EnsemblePRM, tokenizer, out_dir: str | Path, *, model_card: str = "",
              provenance: dict | None = None, overwrite: bool = False) -> Path:
    """Write the self-contained folder to `out_dir` (built beside it and renamed into place, so a crash never
    leaves a half-written model there). An existing non-empty `out_dir` is refused unless `overwrite`."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ModelError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        hf_config(model, provenance).save_pretrained(tmp)
        save_file(export_state_dict(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        shutil.copyfile(MODELING_FILE, tmp / MODELING_FILE.name)
        with _quiet_hf():
            tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
