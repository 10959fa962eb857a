"""Scoring benchmarks (results: bench/results/score.json).

1. Ensemble overhead: the same backbone with E = 32 heads vs E = 1 (target <= 1.10x time), since the
   heads are one batched op on separator positions only.
2. Length bucketing vs plain padding on a mixed-length pool: tokens/s (target >= 1.3x) and padding waste
   (share of padded positions that are padding).
3. End-to-end `score_pool` into a temporary DuckDB: trajectories/s and tokens/s.

    .venv/bin/python bench/bench_score.py                 # cpu preset (MiniLM), about 1-3 minutes on 2 cores
    .venv/bin/python bench/bench_score.py --preset tiny --n 64   # seconds, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from actprm.store import Store, trajectory_id  # noqa: E402
from models import StepBatcher, build_prm  # noqa: E402
from tasks.score import score_pool, score_trajectories  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "score.json"


def mixed_pool(n: int, seed: int = 0) -> list[dict]:
    """Arithmetic trajectories of 1 to 24 steps: lengths spread like real solutions (many short, a long tail)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = min(24, max(1, int(rng.expovariate(1 / 6))))
        a = rng.randint(1, 999)
        steps = []
        for j in range(k):
            b = rng.randint(1, 99)
            steps.append(f"Step {j + 1}: add {b} to {a} to get {a + b}, and we keep going from there.")
            a += b
        q = f"Problem {i}: start from a number and add the values in turn. What is the total?"
        out.append({"id": trajectory_id(q, steps), "question": q, "steps": steps})
    return out


def timed_score(model, batcher, pool, *, bucket=True, batch_size=16, reps=1) -> dict:
    best = None
    for _ in range(reps):
        t0 = time.perf_counter()
        _, tokens, padded = score_trajectories(model, batcher, pool, "bench", batch_size=batch_size, bucket=bucket)
        dt = time.perf_counter() - t0
        if best is None or dt < best["seconds"]:
            best = {"seconds": dt, "tokens": tokens, "padded_tokens": padded}
    best["trajectories_per_s"] = len(pool) / best["seconds"]
    best["tokens_per_s"] = best["tokens"] / best["seconds"]
    best["padding_waste"] = 1 - best["tokens"] / best["padded_tokens"]
    return best


def cuda_sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_forward_times(models: dict, batcher, pool, *, batch_size: int, reps: int) -> dict:
    """Forward time per model on the same bucketed batches, alternating models batch by batch and keeping
    each batch's fastest of `reps` runs, so load from other processes hits all models alike."""
    encoded = sorted((batcher.tokenize(t["question"], t["steps"]) for t in pool), key=lambda e: len(e.input_ids))
    batches = [batcher.collate(encoded[i: i + batch_size], with_labels=False)
               for i in range(0, len(encoded), batch_size)]
    totals = dict.fromkeys(models, 0.0)
    device = next(iter(models.values())).device
    # As the score stage runs it: bf16 autocast on a GPU, where kernels are asynchronous and each timing waits for
    # the device to finish.
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for batch in batches:
            batch = batch.to(device)
            best = dict.fromkeys(models, float("inf"))
            for _ in range(reps):
                for name, model in models.items():
                    cuda_sync(device)
                    t0 = time.perf_counter()
                    model(**batch.model_inputs())
                    cuda_sync(device)
                    best[name] = min(best[name], time.perf_counter() - t0)
            for name in models:
                totals[name] += best[name]
    return totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--n", type=int, default=128, help="trajectories in the mixed-length pool")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3, help="repetitions per batch of the E=32/E=1 timing (min is kept)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    pool = mixed_pool(args.n)
    model32, tokenizer = build_prm(args.preset, num_heads=32, seed=0)
    model1, _ = build_prm(args.preset, num_heads=1, seed=0)
    model1.backbone = model32.backbone  # literally the same backbone
    batcher = StepBatcher(tokenizer, max_length=args.max_length)
    model32.eval(), model1.eval()
    timed_score(model32, batcher, pool[:16], batch_size=args.batch_size)  # warm-up

    overhead_pool = pool[: max(16, args.n // 2)]
    forward = interleaved_forward_times({"e1": model1, "e32": model32}, batcher, overhead_pool,
                                        batch_size=args.batch_size, reps=args.reps)
    e1 = timed_score(model1, batcher, overhead_pool, batch_size=args.batch_size)
    e32 = timed_score(model32, batcher, overhead_pool, batch_size=args.batch_size)
    bucketed = timed_score(model32, batcher, pool, bucket=True, batch_size=args.batch_size)
    plain = timed_score(model32, batcher, pool, bucket=False, batch_size=args.batch_size)

    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.duckdb") as store:
        store.sql("INSERT INTO pools (name, format, status) VALUES ('bench', 'bench', 'registered')")
        for i, t in enumerate(pool):
            store.sql("INSERT INTO trajectories VALUES (?, ?, ?, ?)", [t["id"], t["question"], t["steps"], len(t["steps"])])
            store.sql("INSERT INTO pool_members (pool, trajectory_id, line_no) VALUES ('bench', ?, ?)", [t["id"], i])
        e2e = score_pool(store, "bench", model32, tokenizer, "bench-v1", batch_size=args.batch_size,
                         shard_size=64, max_length=args.max_length, progress=False).as_dict()

    result = {
        "preset": args.preset, "n": args.n, "batch_size": args.batch_size, "max_length": args.max_length,
        "ensemble_overhead": {
            "forward_seconds": forward, "ratio_e32_over_e1": forward["e32"] / forward["e1"], "target": "<= 1.10",
            "method": "model forward on identical bucketed batches, E=1 and E=32 interleaved, best of reps",
            "end_to_end": {"e1": e1, "e32": e32, "ratio_e32_over_e1": e32["seconds"] / e1["seconds"]}},
        "bucketing": {"bucketed": bucketed, "plain_padding": plain,
                      "tokens_per_s_ratio": bucketed["tokens_per_s"] / plain["tokens_per_s"], "target": ">= 1.3"},
        "end_to_end_score_pool": e2e,
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                "loadavg": os.getloadavg(), "python": platform.python_version(),
                "device": "cuda" if torch.cuda.is_available() else "cpu"},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({"ensemble_overhead_ratio": round(result["ensemble_overhead"]["ratio_e32_over_e1"], 3),
                      "ensemble_overhead_ratio_end_to_end": round(e32["seconds"] / e1["seconds"], 3),
                      "bucketing_tokens_per_s_ratio": round(result["bucketing"]["tokens_per_s_ratio"], 3),
                      "padding_waste_bucketed": round(bucketed["padding_waste"], 3),
                      "padding_waste_plain": round(plain["padding_waste"], 3),
                      "trajectories_per_s": round(e2e["trajectories_per_s"], 2),
                      "tokens_per_s": round(e2e["tokens_per_s"], 1)}, indent=2))


if __name__ == "__main__":
    main()
