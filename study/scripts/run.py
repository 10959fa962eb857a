"""Active-learning efficiency study (issue 8): ActPRM vs random, entropy, BALD and full-data training.

Writes study/results/al_study.json, al_study.md (table) and al_study.png (F1 against labels bought) and logs
them to MLflow (experiment `actprm`, run `study`, under --home). Protocol and simplifications: study/protocol.py.

    .venv/bin/python study/scripts/run.py --preset full        # MiniLM, 3,000-trajectory synthetic pool, 3 seeds
    .venv/bin/python study/scripts/run.py --preset quick       # tiny model, 150 trajectories, 1 seed: seconds

The synthetic pool (actprm.synth) is created and ingested on first use under --home; --pool names an
already-ingested pool instead (it must have gold labels). Backbone states are cached under
<home>/study/cache, so a rerun with other seeds or budgets skips the backbone pass. --extend adds seeds to
the study already in --output (e.g. --seeds 3,4 --extend makes a 3-seed study a 5-seed one) without rerunning
the seeds it has; wall_seconds then adds up every invocation (a crashed one up to its last checkpoint). The
outputs are rewritten after every seed, so after a crash the same command with --extend goes on from the last
finished seed. --set changes preset fields for a variant (its name in the outputs records them) and
--strategies compares a subset, e.g. a 5-seed check of one change:

    .venv/bin/python study/scripts/run.py --pool prmbench --seeds 0,1,2,3,4 --strategies actprm,random \
        --set rounds=16 --set steps_per_round=25 --set budgets=0.5,1.0 --output study/results/VARIANT

--set check_steps=true also trains full data at twice the head steps per seed and warns when that lifts it by
more than 0.5 F1 points (the runs are then step-limited and a tie with full data is not the target met); with
--extend it checks the seeds the study already has, without rerunning them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a busy machine starts it slowly
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from study.protocol import STUDY_PRESETS, customize, parse_fields, parse_seeds, strategy_names  # noqa: E402


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
    ap.add_argument("--output", default=str(ROOT / "study" / "results"), help="where al_study.* are written")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="change a study preset field, e.g. --set rounds=16 --set budgets=0.5,1.0 (repeatable)")
    ap.add_argument("--strategies", default=None, help="comma-separated subset of actprm,random,entropy,bald, and "
                    "the diagnostic oracle (buys by the gold labels; only when named)")
    ap.add_argument("--extend", action="store_true",
                    help="add --seeds to the study already in --output instead of starting a new one")
    args = ap.parse_args(argv)

    os.environ["ACTPRM_HOME"] = args.home
    config = {"home": args.home, "model": {"preset": args.model_preset}}
    from actprm.errors import ActPRMError
    from models.errors import ModelError

    try:
        overrides = parse_fields(args.set)
        seeds, strategies = parse_seeds(args.seeds), strategy_names(args.strategies)
        customize(STUDY_PRESETS[args.preset], overrides)  # a bad --set fails here in one line, before Prefect starts
    except (ActPRMError, ModelError) as e:
        ap.error(str(e))

    from study.flow import study_flow

    t0 = time.perf_counter()
    try:
        result = study_flow(pool=args.pool, study_preset=args.preset, config=config, seeds=seeds,
                            output_dir=args.output, head_threads=args.head_threads, extend=args.extend,
                            preset_overrides=overrides, strategies=list(strategies))
    except (ActPRMError, ModelError) as e:  # e.g. a bad --set value, or --extend of a study made under other settings
        ap.error(str(e))
    seconds = time.perf_counter() - t0
    # The flow records every invocation's wall time and host (CPU kernels, GEMM rate before and after).
    host = result["host_gemm_gflops_per_invocation"][-1]
    print(Path(result["outputs"]["markdown"]).read_text())
    print(f"wall time {seconds:.0f}s; host {host['cpu_capability']}, fp32 GEMM {host['before']} GFLOP/s before, "
          f"{host['after']} after; outputs: {', '.join(result['outputs'].values())}; "
          f"MLflow run {result['mlflow_run_id']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
