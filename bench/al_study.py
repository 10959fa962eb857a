"""Active-learning efficiency study (issue 8): ActPRM vs random, entropy, BALD and full-data training.

Writes bench/results/al_study.json, al_study.md (table) and al_study.png (F1 against labels bought) and logs
them to MLflow (experiment `actprm`, run `study`, under --home). Protocol and simplifications: tasks/study.py.

    .venv/bin/python bench/al_study.py --preset full        # MiniLM, 3,000-trajectory synthetic pool, 3 seeds
    .venv/bin/python bench/al_study.py --preset quick       # tiny model, 150 trajectories, 1 seed: seconds

The synthetic pool (actprm.synth) is created and ingested on first use under --home; --pool names an
already-ingested pool instead (it must have gold labels). Backbone states are cached under
<home>/study/cache, so a rerun with other seeds or budgets skips the backbone pass. --extend adds seeds to
the study already in --output (e.g. --seeds 3,4 --extend makes a 3-seed study a 5-seed one) without rerunning
the seeds it has; wall_seconds then adds up every invocation (a crashed one up to its last checkpoint). The
outputs are rewritten after every seed, so after a crash the same command with --extend goes on from the last
finished seed. --set changes preset fields for a variant (its name in the outputs records them) and
--strategies compares a subset, e.g. a 5-seed check of one change:

    .venv/bin/python bench/al_study.py --pool prmbench --seeds 0,1,2,3,4 --strategies actprm,random \
        --set rounds=16 --set steps_per_round=25 --set budgets=0.5,1.0 --output bench/results/VARIANT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a busy machine starts it slowly
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tasks.study import STUDY_PRESETS, customize, strategy_names  # noqa: E402

# The heads' first-layer GEMM: (steps in a minibatch, MiniLM width) @ (width, 32 heads x 128 hidden units).
CALIBRATION_SHAPE = (512, 384, 4096)


def host_gemm_gflops(threads: int, seconds: float = 3.0) -> float:
    """Best fp32 GEMM rate of this host with `threads` torch threads, in GFLOP/s.

    This shared 2-core host ran the same preset study in 13 min one day and 36 min another, so a wall time says
    little alone: every invocation records this rate before and after it runs, next to its wall time."""
    m, k, n = CALIBRATION_SHAPE
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best, end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)
    return 2 * m * k * n / best / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="full", choices=sorted(STUDY_PRESETS), help="study preset")
    ap.add_argument("--pool", default=None, help="an ingested pool (default: a synthetic pool made for the preset)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the preset's)")
    ap.add_argument("--model-preset", default=None, help="model preset (default: the study preset's)")
    ap.add_argument("--head-threads", type=int, default=None,
                    help="torch threads for training the heads (default: the preset's; 1 on a loaded machine)")
    ap.add_argument("--home", default=str(ROOT / ".actprm" / "bench-study"),
                    help="work dir: DuckDB, MLflow store, cached backbone states")
    ap.add_argument("--output", default=str(ROOT / "bench" / "results"), help="where al_study.* are written")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="change a study preset field, e.g. --set rounds=16 --set budgets=0.5,1.0 (repeatable)")
    ap.add_argument("--strategies", default=None, help="comma-separated subset of actprm,random,entropy,bald")
    ap.add_argument("--extend", action="store_true",
                    help="add --seeds to the study already in --output instead of starting a new one")
    args = ap.parse_args(argv)

    os.environ["ACTPRM_HOME"] = args.home
    config = {"home": args.home, "model": {"preset": args.model_preset}}
    from actprm.cli import parse_fields, parse_seeds
    from actprm.errors import ActPRMError

    try:
        overrides = parse_fields(args.set)
        seeds, strategies = parse_seeds(args.seeds), strategy_names(args.strategies)
        # The threads the heads will train on, as the flow resolves them: what the calibration below must use.
        threads = args.head_threads or customize(STUDY_PRESETS[args.preset], overrides).head_threads
    except ActPRMError as e:
        ap.error(str(e))

    from flows.study import study_flow

    earlier = Path(args.output) / "al_study.json"
    # One entry per invocation, as wall_seconds_per_invocation: an extended study may span hosts and days.
    calibration = (json.loads(earlier.read_text()).get("host_gemm_gflops_per_invocation", [])
                   if args.extend and earlier.is_file() else [])
    gflops_before = host_gemm_gflops(threads)
    t0 = time.perf_counter()
    result = study_flow(pool=args.pool, study_preset=args.preset, config=config, seeds=seeds, output_dir=args.output,
                        head_threads=args.head_threads, extend=args.extend, preset_overrides=overrides,
                        strategies=list(strategies))
    seconds = time.perf_counter() - t0
    # The flow records its wall time (every invocation's, with --extend); the machine goes with it.
    saved = Path(result["outputs"]["json"])
    data = json.loads(saved.read_text())
    data["cpu_count"] = os.cpu_count()
    # Float rounding follows the CPU's kernels: a seed reproduces its runs bit for bit on the same kind of host only
    # (rerun on another host, the preset's runs moved by up to 6 F1 points each, their means within the spread).
    data["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    calibration.append({"before": round(gflops_before, 1), "after": round(host_gemm_gflops(threads), 1),
                        "threads": threads, "shape": list(CALIBRATION_SHAPE)})
    data["host_gemm_gflops_per_invocation"] = calibration
    saved.write_text(json.dumps(data, indent=2) + "\n")
    print(Path(result["outputs"]["markdown"]).read_text())
    print(f"wall time {seconds:.0f}s; host fp32 GEMM {calibration[-1]['before']} GFLOP/s before, "
          f"{calibration[-1]['after']} after; outputs: {', '.join(result['outputs'].values())}; "
          f"MLflow run {result['mlflow_run_id']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
