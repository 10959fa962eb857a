"""Benchmark: ingest of an N-trajectory JSONL pool vs a bare DuckDB read_json of the same file.

Variants: `ingest` (default, compressed text) and `ingest_plain` (compress_text=False: trajectory text
stored uncompressed, faster, ~2.3x the disk). Targets (issue 3): ingest (stage + quarantine + dedupe/insert) <= 1.5x the bare
`CREATE TABLE t AS SELECT * FROM read_json(file)`, peak RSS <= 4 GB, contract validation of every
row <= 60 s. Each variant runs in its own child process; its peak RSS is the child's ru_maxrss.

    .venv/bin/python bench/bench_ingest.py --n 1000000        # ~1 GB file, generated once by actprm.synth
    .venv/bin/python bench/bench_ingest.py --n 200000 --keep   # smaller; keep the work dir
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(variant: str, pool_file: str, work: str) -> dict:
    """Runs one variant in this (child) process and returns its timings."""
    sys.path.insert(0, str(ROOT))
    out: dict = {"variant": variant}
    if variant == "bare":
        import duckdb

        t0 = time.perf_counter()
        con = duckdb.connect(os.path.join(work, "bare.duckdb"))
        con.execute("CREATE TABLE t AS SELECT * FROM read_json(?)", [pool_file])
        out["rows"] = con.execute("SELECT count(*) FROM t").fetchone()[0]
        con.close()
        out["seconds"] = time.perf_counter() - t0
        out["db_gb"] = os.path.getsize(os.path.join(work, "bare.duckdb")) / 2**30
    elif variant in ("ingest", "ingest_plain"):
        from actprm.store import Store
        from tasks import ingest as ing

        t0 = time.perf_counter()
        files = ing.resolve_inputs([pool_file])
        fmt = ing.resolve_format(files, None)
        summary = ing.IngestSummary(pool="bench", format=fmt.name)
        db = os.path.join(work, f"{variant}.duckdb")
        with Store(db) as store:
            digest = ing.content_hash(files)
            stage_name = ing.stage(store, files, fmt, ing.IngestLimits(), temporary=True)
            out["stage_seconds"] = time.perf_counter() - t0
            ing.quarantine(store, stage_name, "bench", fmt, files, digest, summary)
            # ingest_plain: trajectory text stored uncompressed (faster insert, ~2.3x the disk)
            ing.insert(store, stage_name, "bench", fmt, summary, compress_text=variant == "ingest")
        out["seconds"] = time.perf_counter() - t0
        out["db_gb"] = os.path.getsize(db) / 2**30
        out["summary"] = {k: getattr(summary, k) for k in ("lines_read", "accepted", "quarantined", "duplicates")}
    elif variant == "validate":
        from actprm.store import Store
        from tasks import ingest as ing
        from tasks.validate import validate_pool

        t0 = time.perf_counter()
        import great_expectations  # noqa: F401  - import time is reported apart from validation

        out["import_seconds"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        with Store(os.path.join(work, "ingest.duckdb")) as store:
            result = validate_pool(store, "bench", limits=ing.IngestLimits(), shard_rows=200_000,
                                   reports_dir=os.path.join(work, "reports"))
        out["seconds"] = time.perf_counter() - t1
        out["rows"], out["shards"] = result.rows, result.shards
        out["failures"], out["warnings"] = result.failures, result.warnings
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def run_child(variant: str, pool_file: str, work: str) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, __file__, "--worker", variant, "--file", pool_file, "--work", work],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res["children_maxrss_gb"] = max(before, after) / 2**20
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "actprm-bench"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--worker")
    ap.add_argument("--file")
    ap.add_argument("--work")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.file, args.work), default=str))
        return
    sys.path.insert(0, str(ROOT))
    from actprm.synth import write_pool

    pool_file = Path(args.data) / f"synth-{args.n}.jsonl"
    if not pool_file.exists():
        print(f"generating {pool_file} ...", flush=True)
        write_pool(pool_file, args.n)
    work = tempfile.mkdtemp(prefix="bench-ingest-")
    try:
        bare = run_child("bare", str(pool_file), work)
        ing = run_child("ingest", str(pool_file), work)
        plain = run_child("ingest_plain", str(pool_file), work)
        val = run_child("validate", str(pool_file), work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "n": args.n, "file_gb": pool_file.stat().st_size / 2**30, "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "bare_seconds": bare["seconds"], "ingest_seconds": ing["seconds"], "stage_seconds": ing["stage_seconds"],
        "ratio": ing["seconds"] / bare["seconds"], "ratio_target": 1.5,
        "bare_db_gb": bare["db_gb"], "ingest_db_gb": ing["db_gb"],
        "ingest_uncompressed_text_seconds": plain["seconds"], "ratio_uncompressed_text": plain["seconds"] / bare["seconds"],
        "ingest_uncompressed_text_db_gb": plain["db_gb"], "ingest_uncompressed_text_peak_rss_gb": plain["peak_rss_gb"],
        "bare_peak_rss_gb": bare["peak_rss_gb"], "ingest_peak_rss_gb": ing["peak_rss_gb"], "rss_target_gb": 4.0,
        "validate_seconds": val["seconds"], "validate_rows": val["rows"], "validate_target_s": 60,
        "validate_peak_rss_gb": val["peak_rss_gb"], "gx_import_seconds": val["import_seconds"],
        "summary": ing["summary"],
    }
    out = ROOT / "bench" / "results" / f"ingest-{args.n}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
