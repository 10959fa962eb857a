"""Run the benchmarks one after another (`make bench`); each writes its own JSON under bench/results/.

The default set is the throughput benchmarks (about 10-20 minutes on 2 cores): ingest of 1M trajectories, scoring,
the judge, the synthetic pool writer and training. `bench_gpu.py` joins them where CUDA is available. The
best-of-N rerank benchmark (`--only rerank`, 10-20 minutes; it trains its PRM when ACTPRM_HOME has no champion) is
not in the default set. The active-learning study takes 13-40 minutes more and is its own command
(`python study/scripts/run.py --preset full`);
`--with-study` adds it here. Each benchmark runs in its own process, so one that fails is reported and the rest
still run; the exit status is 1 when any failed.

    .venv/bin/python bench/run_all.py                       # the default set
    .venv/bin/python bench/run_all.py --only score,judge    # some of them
    .venv/bin/python bench/run_all.py --with-study
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

# name -> script and arguments, in the order they run
BENCHMARKS: dict[str, list[str]] = {
    "ingest": ["bench_ingest.py", "--n", "1000000"],
    "score": ["bench_score.py"],
    "judge": ["bench_judge.py"],
    "synth": ["bench_synth.py"],
    "train": ["bench_train.py"],
    "gpu": ["bench_gpu.py"],
    "rerank": ["bench_rerank.py"],
    # the research study lives in study/ (not a throughput benchmark); --with-study runs its full preset here
    "study": ["../study/scripts/run.py", "--preset", "full"],
}
DEFAULT = ("ingest", "score", "judge", "synth", "train", "gpu")


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def chosen(only: str | None, with_study: bool, has_cuda: bool) -> tuple[list[str], list[str]]:
    """(benchmarks to run, notes on what was left out and why)."""
    if only:
        names = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            raise SystemExit(f"run_all: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    else:
        names = list(DEFAULT) + (["study"] if with_study else [])
    notes = []
    if "gpu" in names and not has_cuda:
        names.remove("gpu")
        notes.append("gpu: skipped, no CUDA device here (bench/results/gpu.json holds the last GPU run)")
    return names, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    ap.add_argument("--with-study", action="store_true", help="also run the active-learning study (full preset)")
    args = ap.parse_args(argv)
    names, notes = chosen(args.only, args.with_study, cuda_available())
    for note in notes:
        print(note, flush=True)
    outcomes = []
    for name in names:
        script, *rest = BENCHMARKS[name]
        print(f"== {name}: {script} {' '.join(rest)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(BENCH / script), *rest])
        outcomes.append((name, rc, time.perf_counter() - t0))
    print("\n| benchmark | exit | minutes |\n|---|---|---|")
    for name, rc, seconds in outcomes:
        print(f"| {name} | {rc} | {seconds / 60:.1f} |")
    return 1 if any(rc != 0 for _, rc, _ in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
