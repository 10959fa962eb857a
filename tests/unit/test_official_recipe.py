"""Where the official ActPRM code is the reference (sail-sg/ActivePRM): head initialisation and the 7B recipe."""

from __future__ import annotations

import math

import torch

from actprm.config import load_settings
from models.presets import _tiny_decoder, build_prm, wrap_backbone


def test_the_paper_backbone_gets_the_official_head_init():
    """Truncated normal (std 1/(2 sqrt(fan_in)), cut at 2 std) with zero biases, as models/nets.py init_weights;
    the tiny/cpu presets keep the uniform init their learning rates were tuned with."""
    backbone, tokenizer, source = _tiny_decoder(None, None, 0)
    prm, _ = wrap_backbone(backbone, tokenizer, preset="qwen2.5-math-7b", source=source, num_heads=8, seed=0)
    assert prm.config.head_init == "truncated_normal"
    for name in ("b1", "b2", "b3"):
        assert torch.count_nonzero(getattr(prm, name)) == 0
    hidden = backbone.config.hidden_size
    for name, fan_in in (("w1", hidden), ("w2", prm.config.head_hidden), ("w3", prm.config.head_hidden)):
        w, std = getattr(prm, name).detach(), 1 / (2 * math.sqrt(fan_in))
        assert w.abs().max() <= 2 * std and 0.7 * std < w.std() < std  # a normal cut at 2 std keeps 88% of its std
    tiny, _ = build_prm("tiny", num_heads=4, seed=0)
    assert tiny.config.head_init == "uniform" and torch.count_nonzero(tiny.b1) > 0


def test_the_7b_preset_defaults_to_the_released_recipe(monkeypatch):
    monkeypatch.delenv("ACTPRM_CONFIG", raising=False)
    qwen = load_settings({"model": {"preset": "qwen2.5-math-7b"}})
    t = qwen.train
    assert (t.lr, t.head_lr, t.batch_size * t.grad_accum, t.epochs, t.warmup_steps, t.mixed_precision) == (
        1e-5, None, 64, 1, 500, "bf16")
    assert qwen.model.max_length == 2048
    # a value the user gives still wins; the CPU presets keep their tuned defaults
    assert load_settings({"model": {"preset": "qwen2.5-math-7b"}, "train": {"lr": 3e-6}}).train.lr == 3e-6
    cpu = load_settings({"model": {"preset": "cpu"}})
    assert (cpu.train.lr, cpu.train.head_lr, cpu.train.warmup_steps, cpu.model.max_length) == (2e-4, 3e-3, None, 512)
