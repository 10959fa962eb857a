"""Benchmark (#42): the whole `actprm ingest` command, as a user runs it, against a bare DuckDB read_json of the
same file, in the same run; plus the stage alone (staging + quarantine + dedupe/insert, in-process).

The pool is written by this script's own generator (not actprm.synth): realistic lengths, a question of 80-600
characters and 2-12 steps of 40-270 characters, ~1.3 KB a line, so --n 1000000 gives a ~1.3 GB file. Every
variant runs in its own child process; its peak RSS is that child's (for the command: the `actprm` process's).
The bare read is timed before and after the others and the faster of the two is the baseline (on a shared
machine the load drifts during a run; the ratio against the faster bare read is the pessimistic one).

Targets (#42): command <= 2.0x bare, stage <= 1.5x bare, peak RSS <= 4 GB, every row validated.

    .venv/bin/python bench/bench_ingest.py --n 1000000        # ~1.3 GB file, generated once under --data
    .venv/bin/python bench/bench_ingest.py --n 100000          # a quick check
    .venv/bin/python bench/bench_ingest.py --bad-every 1000     # 1 line in 1,000 a JSON object to quarantine
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"command_ratio": 2.0, "stage_ratio": 1.5, "peak_rss_gb": 4.0}

WORDS = ("the of and to a in is that for it as with was on be by this are we from at or an have not which one "
         "all their there been has more if will would so what about when up out can them then these some into "
         "her two like him time could no make than first its now people only other new way may over such our "
         "total number each half twice sum product difference remainder multiply divide add subtract equals "
         "apples boxes miles hours dollars pencils students tickets ratio percent fraction integer prime root "
         "therefore hence since because so we get substituting simplifying solving gives checking answer").split()


def write_pool(path: Path, n: int, seed: int = 0, bad_every: int = 0) -> None:
    """`n` JSONL lines in the project's own format with realistic text lengths. Sentences come from a fixed
    bank (generating 1 GB word by word would take minutes) and every trajectory gets unique numbers, so none
    is a duplicate. `bad_every`: every so many lines one is a JSON object ingest quarantines (its steps are
    empty), which DuckDB's reader still reads: the bare read and the fast path both take the file."""
    rng = random.Random(seed)
    bank = [" ".join(rng.choices(WORDS, k=rng.randint(4, 40))) for _ in range(20_000)]  # ~25-250 chars
    tmp = path.with_suffix(".part")
    with open(tmp, "w", encoding="utf-8") as out:
        for i in range(n):
            k = rng.randint(2, 12)
            question = f"Problem {i}: " + " ".join(rng.choices(bank, k=rng.randint(1, 4)))[:600]
            steps = [f"Step {j + 1}: {rng.choice(bank)} = {i * 31 + j}." for j in range(k)]
            first_error = rng.choice([-1, -1, rng.randrange(k)])
            labels = [1] * k if first_error < 0 else [1] * first_error + [0]
            if bad_every and i % bad_every == bad_every // 2:
                steps, labels, first_error = [], [], -1
            out.write(json.dumps({"id": f"bench-{i}", "question": question, "steps": steps, "hard_labels": labels,
                                  "first_error": first_error}) + "\n")
    tmp.rename(path)


def worker(variant: str, pool_file: str, work: str) -> dict:
    """Runs one variant in this (child) process and returns its timings."""
    sys.path.insert(0, str(ROOT))
    out: dict = {"variant": variant}
    if variant == "bare":
        import duckdb

        db = os.path.join(work, "bare.duckdb")
        t0 = time.perf_counter()
        con = duckdb.connect(db)
        con.execute("CREATE TABLE t AS SELECT * FROM read_json(?, format = 'newline_delimited')", [pool_file])
        out["rows"] = con.execute("SELECT count(*) FROM t").fetchone()[0]
        con.close()
        out["seconds"] = time.perf_counter() - t0
        os.remove(db)
    elif variant == "stage":
        from actprm.store import Store
        from tasks import ingest as ing

        db = os.path.join(work, "stage.duckdb")
        t0 = time.perf_counter()
        files = ing.resolve_inputs([pool_file])
        fmt = ing.resolve_format(files, None)
        summary = ing.IngestSummary(pool="bench", format=fmt.name)
        with Store(db) as store:
            digest = ing.content_hash(files)
            stage_name = ing.stage(store, files, fmt, ing.IngestLimits(), temporary=True, tmp_dir=work)
            out["staging_seconds"] = time.perf_counter() - t0
            ing.quarantine(store, stage_name, "bench", fmt, files, digest, summary)
            ing.insert(store, stage_name, "bench", fmt, summary)
        out["seconds"] = time.perf_counter() - t0
        out["summary"] = {k: getattr(summary, k) for k in ("lines_read", "accepted", "quarantined", "duplicates")}
        os.remove(db)
    elif variant == "command":
        home = os.path.join(work, "home")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "ACTPRM_"))}
        env["ACTPRM_HOME"] = home
        actprm = shutil.which("actprm", path=str(Path(sys.executable).parent)) or "actprm"
        t0 = time.perf_counter()
        proc = subprocess.run([actprm, "ingest", pool_file, "--pool", "bench", "--json"], capture_output=True,
                              text=True, env=env, cwd=ROOT)
        out["seconds"] = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"actprm ingest failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout)
        out["phases"] = result["seconds"]
        out["summary"] = {k: result[k] for k in ("status", "lines_read", "accepted", "quarantined", "duplicates",
                                                 "pool_trajectories", "validated_rows")}
        shutil.rmtree(home, ignore_errors=True)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if variant == "command" else resource.RUSAGE_SELF)
    out["peak_rss_gb"] = usage.ru_maxrss / 2**20
    # CPU seconds (all threads, user + system): what the work costs whatever else shares the machine; the wall
    # clock ratios are the targets, the CPU ratios say how far the load of other users moved them.
    out["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return out


def commit() -> str:
    """The code measured: HEAD, marked when the work tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT)
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if head.returncode == 0 else "unknown"


def run_child(variant: str, pool_file: str, work: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", variant, "--file", pool_file, "--work", work],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["load_avg_1m"] = os.getloadavg()[0]
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--bad-every", type=int, default=0, help="one line in this many is to be quarantined")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "actprm-bench"))
    ap.add_argument("--worker")
    ap.add_argument("--file")
    ap.add_argument("--work")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.file, args.work), default=str))
        return
    tag = f"{args.n}-bad{args.bad_every}" if args.bad_every else f"{args.n}"
    pool_file = Path(args.data) / f"realistic-{tag}.jsonl"
    if not pool_file.exists():
        print(f"generating {pool_file} ...", flush=True)
        pool_file.parent.mkdir(parents=True, exist_ok=True)
        write_pool(pool_file, args.n, bad_every=args.bad_every)
    work = tempfile.mkdtemp(prefix="bench-ingest-")
    try:
        bare_before = run_child("bare", str(pool_file), work)
        stage = run_child("stage", str(pool_file), work)
        command = run_child("command", str(pool_file), work)
        bare_after = run_child("bare", str(pool_file), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bare = min(bare_before["seconds"], bare_after["seconds"])
    bare_cpu = min(bare_before["cpu_seconds"], bare_after["cpu_seconds"])
    s = command["summary"]
    result = {
        "n": args.n, "bad_every": args.bad_every, "commit": commit(), "file_gb": pool_file.stat().st_size / 2**30,
        "cpus": os.cpu_count(),
        "load_avg_1m": [r["load_avg_1m"] for r in (bare_before, stage, command, bare_after)],
        "bare_seconds": [bare_before["seconds"], bare_after["seconds"]],
        "command_seconds": command["seconds"], "command_ratio": command["seconds"] / bare,
        "command_phases": command["phases"],
        "stage_seconds": stage["seconds"], "stage_ratio": stage["seconds"] / bare,
        "staging_only_seconds": stage["staging_seconds"],
        "cpu_seconds": {"bare": [bare_before["cpu_seconds"], bare_after["cpu_seconds"]], "stage": stage["cpu_seconds"],
                        "command": command["cpu_seconds"]},
        "command_cpu_ratio": command["cpu_seconds"] / bare_cpu, "stage_cpu_ratio": stage["cpu_seconds"] / bare_cpu,
        "peak_rss_gb": {"bare": max(bare_before["peak_rss_gb"], bare_after["peak_rss_gb"]),
                        "stage": stage["peak_rss_gb"], "command": command["peak_rss_gb"]},
        "every_row_validated": s["validated_rows"] == s["pool_trajectories"] == s["accepted"],
        "summary": s, "targets": TARGETS,
    }
    result["meets"] = {"command_ratio": result["command_ratio"] <= TARGETS["command_ratio"],
                       "stage_ratio": result["stage_ratio"] <= TARGETS["stage_ratio"],
                       "peak_rss_gb": max(result["peak_rss_gb"].values()) <= TARGETS["peak_rss_gb"]}
    out = ROOT / "bench" / "results" / f"ingest-{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
