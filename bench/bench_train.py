"""Training benchmark (results: bench/results/train.json): in-training selection in one pass or two.

ActPRM's in-training selection needs the ensemble's scores of every micro-batch before the update. A backbone
with dropout scores differently in training mode, so it runs a separate no-grad scoring pass first; a backbone
without dropout (Qwen2.5) reads the training forward's own scores (`EnsemblePRM.has_dropout`). This measures
what that saves: training time per optimizer step with one pass against the same run forced to take the
scoring pass, on a Qwen2-architecture decoder (the paper's backbone family) small enough for a CPU, alternating
the two so machine noise hits both alike. Both runs end with identical weights (tests/model/test_train.py).

    .venv/bin/python bench/bench_train.py                 # 4-layer, 256-wide decoder, 128 trajectories, ~2 min
    .venv/bin/python bench/bench_train.py --n 32 --repeats 1 --layers 2 --hidden 64   # seconds, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"


def decoder_preset(layers: int, hidden: int):
    """A model preset (models.presets.PRESETS signature) for a config-built Qwen2 decoder of the given size."""
    def build(backbone_path, dtype, seed):
        from transformers import AutoModel, Qwen2Config

        from models.tiny_tokenizer import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        torch.manual_seed(seed)
        cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=max(1, hidden // 64), num_key_value_heads=1,
                          intermediate_size=4 * hidden, max_position_embeddings=2048,
                          pad_token_id=tokenizer.pad_token_id)
        return AutoModel.from_config(cfg, dtype=dtype or torch.float32), tokenizer, f"config:qwen2-{layers}x{hidden}"
    return build


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="synthetic trajectories to train on (one epoch)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each mode, alternating")
    ap.add_argument("--output", default=str(RESULTS))
    args = ap.parse_args(argv)

    from actprm.config import TrainConfig
    from actprm.synth import generate
    from models import EnsemblePRM, build_prm
    from models.presets import PRESETS
    from tasks.train import train_prm

    PRESETS["bench-decoder"] = decoder_preset(args.layers, args.hidden)
    examples = [{"question": r["question"], "steps": r["steps"], "first_error": r["first_error"]}
                for r in generate(args.n, seed=0)]
    assert not build_prm("bench-decoder", num_heads=2)[0].has_dropout()
    # Thresholds at which the ensemble keeps some trajectories and leaves others out, as in a real run.
    settings = TrainConfig(preset="bench-decoder", num_heads=32, epochs=1, batch_size=args.batch_size, lr=1e-4,
                           head_lr=None, max_length=512, seed=0, p_threshold=0.95, std_threshold=0.005)
    has_dropout = EnsemblePRM.has_dropout
    seconds: dict[str, list[float]] = {"one_pass": [], "scoring_pass": []}
    steps = 0
    for rep in range(args.repeats + 1):  # the first round warms up caches and allocators, untimed
        for mode in ("one_pass", "scoring_pass"):
            EnsemblePRM.has_dropout = has_dropout if mode == "one_pass" else (lambda self: True)
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    result = train_prm(examples, settings, output_dir=tmp, progress=False)
                    elapsed = time.perf_counter() - t0
            finally:
                EnsemblePRM.has_dropout = has_dropout
            steps = result.steps
            if rep:
                seconds[mode].append(elapsed)
            print(f"{'warm-up' if not rep else f'run {rep}'} {mode}: {elapsed:.1f}s, {result.steps} steps", flush=True)
    best = {m: min(v) for m, v in seconds.items()}
    out = {"backbone": f"qwen2 config, {args.layers} layers x {args.hidden} (no dropout)", "trajectories": args.n,
           "batch_size": args.batch_size, "optimizer_steps": steps, "repeats": args.repeats,
           "seconds": seconds, "seconds_per_step": {m: best[m] / steps for m in best},
           "scoring_pass_over_one_pass": best["scoring_pass"] / best["one_pass"],
           "median_ratio": statistics.median(b / a for a, b in zip(seconds["one_pass"], seconds["scoring_pass"])),
           "threads": torch.get_num_threads(), "machine": platform.machine(), "cpu_count": os.cpu_count()}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
