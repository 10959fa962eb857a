"""Throughput of the built-in synthetic pool writer (single core) and agreement of its programmatic judge.

    .venv/bin/python bench/bench_synth.py [--n 1000000] [--judge-n 20000]

Writes bench/results/synth.json. Because the machine may be shared, it also times a fixed pure-Python reference
loop (`sum(range(10**6))`, ~10 ms on an idle modern core) so numbers from different machines can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import timeit
from collections import Counter
from pathlib import Path

from actprm.synth import generate, verify_first_error, write_pool

RESULTS = Path(__file__).parent / "results" / "synth.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="records written to JSONL")
    parser.add_argument("--judge-n", type=int, default=20_000, help="records checked against verify_first_error")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    reference_ms = min(timeit.repeat("sum(range(10**6))", number=1, repeat=5)) * 1000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pool.jsonl"
        cpu0 = time.process_time()
        summary = write_pool(path, args.n, seed=args.seed)
        cpu = time.process_time() - cpu0
        size = path.stat().st_size

    t0 = time.perf_counter()
    agree, per_kind = 0, Counter()
    for rec in generate(args.judge_n, seed=args.seed + 1):
        ok = verify_first_error(rec["question"], rec["steps"]) == rec["first_error"]
        agree += ok
        per_kind[(rec["error_kind"] or "none", ok)] += 1
    judge_s = time.perf_counter() - t0

    result = {
        "records": args.n,
        "seconds": round(summary["seconds"], 2),
        "records_per_s": round(args.n / summary["seconds"]),
        "records_per_cpu_s": round(args.n / cpu),
        "file_bytes": size,
        "bytes_per_record": round(size / args.n, 1),
        "erroneous_share": round(summary["erroneous"] / args.n, 4),
        "judge_records": args.judge_n,
        "judge_agreement": agree / args.judge_n,
        "judge_misses_by_kind": {k: v for (k, ok), v in sorted(per_kind.items()) if not ok},
        "judge_records_per_s": round(args.judge_n / judge_s),
        "reference_sum_range_1e6_ms": round(reference_ms, 1),
        "loadavg_1m": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
