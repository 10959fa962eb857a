"""GPU checks and benchmarks of the CUDA paths (results: bench/results/gpu.json).

The development and CI machines have no GPU, so the code paths a GPU user runs first (accelerate's bf16 training,
bf16-autocast scoring beside float32 heads, the Qwen2 decoder at 7B size) are exercised here, on a lent GPU:

1. `train`: `train_prm` on CUDA with the `tiny-decoder` preset (the causal, 7B-like layout), once in float32 and
   once with accelerate's bf16 mixed precision, on a learnable pool ("wrong" marks the first error). Both must
   learn: held-out exact first-error accuracy, final loss, optimizer steps/s.
2. `score_agreement`: the float32-trained PRM scores a held-out set with the score stage's own function
   (`tasks.score.score_trajectories`) on CUDA, where the backbone runs under bf16 autocast, and on the CPU in
   float32. Reported: the largest |delta| of the ensemble mean and std, and how often the decisions ActPRM buys
   labels on agree: the uncertain flag (paper Sec. 3.2), the predicted first error, and the top half by the
   acquisition score (what a 50% budget buys). Run on the untrained PRM (means near 0.5), one 24 steps into
   training (means spread between 0.5 and certainty) and the trained one.
3. `scoring_7b_shape`: Qwen2.5-Math-7B-Instruct's architecture (hidden 3584, 28 layers, GQA 28/4, MLP 18944) with
   random weights in bf16, initialized on the GPU (no hub here): the forward time of 32 heads against 1 on the same
   batches (target <= 1.10x, as on the CPU), length bucketing against plain padding (tokens/s), and the score
   stage's throughput, from which the hours to score one million 512-token trajectories are projected. The
   tokenizer is the tiny character one (about 4x the tokens of Qwen's BPE for the same text), so tokens/s is the
   number to carry over, not trajectories/s. Also the score stage's batch size against larger ones.
4. `train_throughput`: training tokens/s with accelerate's bf16, fully fine-tuning a Qwen2.5-1.5B-shaped backbone
   (gradient checkpointing on) and training the heads on the frozen 7B shape.

Each section is written to the output as soon as it finishes, and a section that fails records its error and lets
the others run.

    python bench/bench_gpu.py                               # on a CUDA machine, about 3-5 minutes on one H200
    python bench/bench_gpu.py --device cpu --small           # the same code at toy sizes, for a CPU smoke run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import platform
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_score import cuda_sync, interleaved_forward_times, mixed_pool, timed_score  # noqa: E402
from models import EnsemblePRM, StepBatcher, build_prm  # noqa: E402
from models.presets import wrap_backbone  # noqa: E402
from models.uncertainty import P_THRESHOLD, STD_THRESHOLD  # noqa: E402
from tasks.score import score_trajectories  # noqa: E402
from actprm.config import TrainConfig  # noqa: E402
from tasks.train import train_prm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"

# Qwen2.5-Math-7B-Instruct's config.json (the paper's backbone); only the vocabulary differs (the tiny tokenizer's).
QWEN_7B_SHAPE = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                     intermediate_size=18944, max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-6)
QWEN_1_5B_SHAPE = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                       intermediate_size=8960, max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-6)
TOY_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, max_position_embeddings=2048)


def learnable_pool(n: int, seed: int) -> list[dict]:
    """Trajectories of 2-6 steps whose first error is the first step saying "wrong": a PRM that learns anything
    finds it. About a third are all correct."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randint(2, 6)
        fe = rng.choice([-1, -1] + list(range(k)))
        steps = [f"step {j + 1}: {'wrong' if j == fe else 'fine'} {rng.randint(0, 99)}" for j in range(k)]
        out.append({"id": f"t{seed}-{i}", "question": f"q{i}: check each step", "steps": steps, "first_error": fe})
    return out


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _accuracy(rows: list[dict], pool: list[dict]) -> float:
    return sum(r["predicted_first_error"] == t["first_error"] for r, t in zip(rows, pool)) / len(pool)


def section_train(args, device, workdir: Path) -> dict:
    train, held_out = learnable_pool(args.train_n, seed=1), learnable_pool(args.eval_n, seed=2)
    out: dict = {"preset": "tiny-decoder", "train_trajectories": len(train), "eval_trajectories": len(held_out)}
    for precision in ("no", "bf16"):
        cuda_sync(device)
        t0 = time.perf_counter()
        cfg = TrainConfig(preset="tiny-decoder", num_heads=32, epochs=args.epochs, batch_size=16, lr=3e-3,
                          head_lr=None, seed=0, max_length=256, mixed_precision=precision)
        result = train_prm(train, cfg, output_dir=workdir / f"train-{precision}", progress=False)
        cuda_sync(device)
        seconds = time.perf_counter() - t0
        model, tokenizer = EnsemblePRM.from_pretrained(result.model_dir, device=device, with_tokenizer=True)
        rows, _, _ = score_trajectories(model, StepBatcher(tokenizer, max_length=256), held_out, "check")
        out[precision] = {"seconds": seconds, "steps": result.steps, "steps_per_s": result.steps / seconds,
                          "final_metrics": result.metrics, "held_out_first_error_accuracy": _accuracy(rows, held_out),
                          "parameter_device": str(model.device), "model_dir": result.model_dir}
    return out


def _agreement(cpu_rows: list[dict], gpu_rows: list[dict]) -> dict:
    def flat(rows, key):
        return torch.tensor([v for r in rows for v in r[key]], dtype=torch.float64)

    half = len(cpu_rows) // 2

    def top_half(rows):
        order = sorted(range(len(rows)), key=lambda i: (-rows[i]["acquisition"], i))
        return set(order[:half])

    same_top = len(top_half(cpu_rows) & top_half(gpu_rows))
    mu_cpu = flat(cpu_rows, "mu")
    return {
        "trajectories": len(cpu_rows), "steps": int(mu_cpu.numel()),
        "max_abs_delta_mu": float((mu_cpu - flat(gpu_rows, "mu")).abs().max()),
        "mean_abs_delta_mu": float((mu_cpu - flat(gpu_rows, "mu")).abs().mean()),
        "max_abs_delta_sigma": float((flat(cpu_rows, "sigma") - flat(gpu_rows, "sigma")).abs().max()),
        "mean_mu_cpu": float(mu_cpu.mean()),
        "uncertain_cpu": sum(r["uncertain"] for r in cpu_rows),
        "uncertain_agreement":
            sum(c["uncertain"] == g["uncertain"] for c, g in zip(cpu_rows, gpu_rows)) / len(cpu_rows),
        "predicted_first_error_agreement":
            sum(c["predicted_first_error"] == g["predicted_first_error"] for c, g in zip(cpu_rows, gpu_rows))
            / len(cpu_rows),
        "top_half_by_acquisition_overlap": same_top / half if half else 1.0,
        "thresholds": {"p": P_THRESHOLD, "std": STD_THRESHOLD},
    }


def section_score_agreement(args, device, workdir: Path, trained_dir: str | None) -> dict:
    held_out = learnable_pool(args.eval_n, seed=3)
    # 24 steps in: the means spread between 0.5 and certainty.
    partial = train_prm(learnable_pool(384, seed=4),
                        TrainConfig(preset="tiny-decoder", num_heads=32, epochs=1, batch_size=16, lr=3e-3,
                                    head_lr=None, seed=0, max_length=256),
                        output_dir=workdir / "partial", progress=False)
    untrained, tokenizer = build_prm("tiny-decoder", num_heads=32, seed=0)
    cases = {"untrained": (untrained.eval(), tokenizer)}
    for name, model_dir in (("partly_trained_fp32", partial.model_dir), ("trained_fp32", trained_dir)):
        if model_dir is not None:
            cases[name] = EnsemblePRM.from_pretrained(model_dir, with_tokenizer=True)
    out = {}
    for name, (cpu_model, tokenizer) in cases.items():
        gpu_model = copy.deepcopy(cpu_model).to(device)
        batcher = StepBatcher(tokenizer, max_length=256)
        cpu_rows, _, _ = score_trajectories(cpu_model, batcher, held_out, "check")
        gpu_rows, _, _ = score_trajectories(gpu_model, batcher, held_out, "check")
        out[name] = _agreement(cpu_rows, gpu_rows) | {"device": str(gpu_model.device)}
    return out


def qwen_shaped_prm(shape: dict, device: torch.device, num_heads: int):
    """A PRM on a Qwen2 architecture (`shape`) with random bf16 weights, built on `device` (no download)."""
    from transformers import AutoModel, Qwen2Config

    from models.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tokenizer) + 1, pad_token_id=tokenizer.pad_token_id, **shape)
    with torch.device(device):
        backbone = AutoModel.from_config(cfg, dtype=torch.bfloat16)
    source = f"random:qwen2-{shape['hidden_size']}x{shape['num_hidden_layers']}"
    model, tokenizer = wrap_backbone(backbone, tokenizer, preset="qwen2.5-math-7b", source=source,
                                     num_heads=num_heads, seed=0)
    return model.to(device).eval(), tokenizer


def section_scoring_7b_shape(args, device) -> dict:
    shape = TOY_SHAPE if args.small else QWEN_7B_SHAPE
    cuda_sync(device)
    t0 = time.perf_counter()
    model32, tokenizer = qwen_shaped_prm(shape, device, num_heads=32)
    build_seconds = time.perf_counter() - t0
    model1 = EnsemblePRM(model32.backbone, dataclasses.replace(model32.config, num_heads=1))
    model1.to(device).eval()
    batcher = StepBatcher(tokenizer, max_length=args.max_length)
    pool = mixed_pool(args.score_n)
    timed_score(model32, batcher, pool[: args.batch_size], batch_size=args.batch_size)  # warm-up (kernels, allocator)
    forward = interleaved_forward_times({"e1": model1, "e32": model32}, batcher, pool[: args.score_n // 2],
                                        batch_size=args.batch_size, reps=2)
    bucketed = timed_score(model32, batcher, pool, bucket=True, batch_size=args.batch_size)
    plain = timed_score(model32, batcher, pool, bucket=False, batch_size=args.batch_size)
    # The score stage's batch_size (default 32) against larger ones, on the same bucketed pool.
    sweep = {bs: timed_score(model32, batcher, pool, bucket=True, batch_size=bs)["tokens_per_s"]
             for bs in args.batch_sweep}
    params = sum(p.numel() for p in model32.backbone.parameters())
    tokens_per_s = bucketed["tokens_per_s"]
    return {
        "shape": shape, "backbone_parameters": params, "build_seconds": build_seconds,
        "batch_size": args.batch_size, "max_length": args.max_length, "trajectories": len(pool),
        "ensemble_overhead": {"forward_seconds": forward, "ratio_e32_over_e1": forward["e32"] / forward["e1"],
                              "target": "<= 1.10"},
        "bucketing": {"bucketed": bucketed, "plain_padding": plain,
                      "tokens_per_s_ratio": bucketed["tokens_per_s"] / plain["tokens_per_s"], "target": ">= 1.3"},
        "tokens_per_s_by_batch_size": sweep,
        "backbone_tflops_per_s": 2 * params * tokens_per_s / 1e12,  # forward ~ 2 FLOPs per parameter per token
        "hours_per_million_512_token_trajectories": 1e6 * 512 / tokens_per_s / 3600,
        "peak_memory_gib": _peak_gib(device),
    }


def section_train_throughput(args, device, workdir: Path) -> dict:
    """Training tokens/s with accelerate's bf16: full fine-tuning of a 1.5B-shaped Qwen2 (Qwen2.5-1.5B's
    architecture; the 7B's AdamW states alone would take ~120 GB of one GPU), and the heads alone on the frozen
    7B shape (`freeze_backbone`)."""
    shapes = {"qwen2.5-1.5b-shape full": (QWEN_1_5B_SHAPE, False), "qwen2.5-7b-shape frozen": (QWEN_7B_SHAPE, True)}
    if args.small:
        shapes = {"toy full": (TOY_SHAPE, False), "toy frozen": (TOY_SHAPE, True)}
    pool = [t | {"first_error": -1 if i % 3 == 0 else min(i % 5, len(t["steps"]) - 1)}
            for i, t in enumerate(mixed_pool(args.train_throughput_n, seed=5))]
    out = {}
    for name, (shape, frozen) in shapes.items():
        model, tokenizer = qwen_shaped_prm(shape, device, num_heads=32)
        if not frozen:
            model.backbone.float()  # full fine-tuning keeps float32 master weights; bf16 is autocast's compute
        batcher = StepBatcher(tokenizer, max_length=args.max_length)
        tokens = sum(len(batcher.tokenize(t["question"], t["steps"]).input_ids) for t in pool)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stamps: list[float] = []

        def on_step(step: int, metrics: dict, stamps=stamps) -> None:
            cuda_sync(device)
            stamps.append(time.perf_counter())

        t0 = time.perf_counter()
        cfg = TrainConfig(preset="tiny", epochs=1, batch_size=8, lr=1e-5, head_lr=3e-3, freeze_backbone=frozen,
                          max_length=args.max_length, mixed_precision="bf16", gradient_checkpointing=not frozen)
        result = train_prm(pool, cfg, output_dir=workdir / name.replace(" ", "-"), model=model, tokenizer=tokenizer,
                           progress=False, on_metrics=on_step)
        seconds = time.perf_counter() - t0  # includes saving the model, as a run does
        # Steady state: from the first optimizer step's end to the last's (the first pays for kernel selection).
        per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
        out[name] = {"shape": shape, "frozen_backbone": frozen, "trajectories": len(pool), "tokens": tokens,
                     "steps": result.steps, "seconds_with_save": seconds, "seconds_per_step": per_step,
                     "tokens_per_s": tokens / result.steps / per_step, "final_loss": result.metrics.get("loss"),
                     "peak_memory_gib": _peak_gib(device)}
        del model, result
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="toy sizes (a CPU smoke run of the same code)")
    ap.add_argument("--train-n", type=int, default=None)
    ap.add_argument("--eval-n", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--score-n", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--batch-sweep", default="64,128", help="score-stage batch sizes to time besides --batch-size")
    ap.add_argument("--train-throughput-n", type=int, default=None)
    ap.add_argument("--sections", default="train,score_agreement,scoring_7b_shape,train_throughput")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    args.train_n = args.train_n or (48 if args.small else 768)
    args.eval_n = args.eval_n or (32 if args.small else 256)
    args.epochs = args.epochs or (1 if args.small else 4)
    args.score_n = args.score_n or (16 if args.small else 512)
    args.train_throughput_n = args.train_throughput_n or (16 if args.small else 96)
    args.batch_sweep = [int(b) for b in args.batch_sweep.split(",") if b]
    if args.small:
        args.batch_size, args.max_length, args.batch_sweep = 8, 256, [16]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; run it on a GPU machine, or with --device cpu --small", file=sys.stderr)
        return 2

    import accelerate
    import transformers

    result: dict = {"env": {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "accelerate": accelerate.__version__, "python": platform.python_version(), "cpus": os.cpu_count()},
        "small": args.small, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    wanted = args.sections.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        runners = {
            "train": lambda: section_train(args, device, Path(tmp)),
            "score_agreement": lambda: section_score_agreement(
                args, device, Path(tmp), (result.get("train") or {}).get("no", {}).get("model_dir")),
            "scoring_7b_shape": lambda: section_scoring_7b_shape(args, device),
            "train_throughput": lambda: section_train_throughput(args, device, Path(tmp)),
        }
        for name in wanted:
            t0 = time.perf_counter()
            try:
                result[name] = runners[name]()
            except Exception as exc:  # one broken path must not hide the others' results
                result[name] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0],
                                "traceback": traceback.format_exc(limit=8)}
            result[name]["section_seconds"] = time.perf_counter() - t0
            args.out.write_text(json.dumps(result, indent=2, default=str))
            print(f"{name}: {json.dumps(result[name], default=str)[:600]}", flush=True)
    return 1 if any("error" in result[n] for n in wanted) else 0


if __name__ == "__main__":
    sys.exit(main())
