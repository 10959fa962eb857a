"""Judge labeling throughput against a local OpenAI-compatible server that answers in 100 ms.

Target: concurrency 16 gives >= 120 labels/s (the ideal is 16 / 0.1 s = 160/s); concurrency 1 is the
in-run baseline (ideal 10/s). Every label goes through the production path: budget reservation,
HTTP request, strict parse, label + ledger committed to DuckDB. The server runs in its own process.
Bare httpx requests/s against the same server are measured too: on a shared, loaded machine that is
the ceiling, and `fraction_of_bare_http` shows what our bookkeeping costs on top of it.

    .venv/bin/python bench/bench_judge.py [--n 800] [--latency 0.1]   # writes bench/results/judge.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actprm.judges import build_judge  # noqa: E402
from actprm.judges.budget import BudgetLimits  # noqa: E402
from actprm.store import Store  # noqa: E402
from actprm.testing.pools import synth_pool  # noqa: E402
from tasks.label import label_ids  # noqa: E402


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_once(url: str, db: Path, ids: list[str], concurrency: int) -> dict:
    judge = build_judge("openai", url=url, model=f"bench-c{concurrency}", api_key="bench", base_delay=0.05,
                        concurrency=concurrency, timeout_s=30)
    with Store(db) as store:
        cpu0, t0 = _cpu_s(), time.perf_counter()
        s = label_ids(store, ids, judge, pool="bench", limits=BudgetLimits(price_per_1k_tokens=0.001),
                      concurrency=concurrency, progress=False)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
        consistency = store.ledger_consistency()
    return {"concurrency": concurrency, "labels": s.labeled, "failed": s.failed, "wall_s": round(wall, 3),
            "labels_per_s": round(s.labeled / wall, 1), "client_cpu_ms_per_label": round(1000 * cpu / max(1, s.labeled), 2),
            "latency_p50_s": s.latency_p50, "latency_p99_s": s.latency_p99, "ledger_consistency": consistency}


def http_ceiling(url: str, n: int, concurrency: int) -> float:
    """Requests/s of bare httpx against the same server: what this machine allows before any of our work."""
    import asyncio

    import httpx

    body = {"model": "m", "messages": [{"role": "user", "content": "[Math Problem]\n\nq\n\n[Solution]\n\n"
                                                                  "<paragraph_0>\n1 + 1 = 2\n</paragraph_0>"}]}

    async def go() -> float:
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as client:
            async def one():
                async with sem:
                    (await client.post(url + "/chat/completions", json=body)).raise_for_status()

            t0 = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(n)))
            return n / (time.perf_counter() - t0)

    return round(asyncio.run(go()), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=800, help="labels requested at concurrency 16")
    ap.add_argument("--n-serial", type=int, default=50, help="labels requested at concurrency 1")
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--out", default=str(ROOT / "bench/results/judge.json"))
    args = ap.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "actprm.testing.judge_server", "--latency", str(args.latency)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "bench.duckdb"
            with Store(db) as store:
                ids = synth_pool(store, "bench", args.n, seed=1)
            load_before = os.getloadavg()
            serial = run_once(url, db, ids[: args.n_serial], 1)
            parallel = run_once(url, db, ids, 16)
            ceiling = http_ceiling(url, min(args.n, 400), 16)
            load_after = os.getloadavg()
    finally:
        server.kill()
    result = {
        "server_latency_s": args.latency, "serial": serial, "concurrent": parallel,
        "speedup": round(parallel["labels_per_s"] / serial["labels_per_s"], 2),
        "target_labels_per_s": 120, "meets_target": parallel["labels_per_s"] >= 120,
        "bare_httpx_requests_per_s_c16": ceiling,
        "fraction_of_bare_http": round(parallel["labels_per_s"] / ceiling, 2),
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
                    "python": platform.python_version()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
