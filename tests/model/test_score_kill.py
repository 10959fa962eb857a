"""kill -9 in the middle of scoring loses at most the shard in flight; a rerun scores only the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from actprm.store import Store  # noqa: E402
from models import build_prm  # noqa: E402
from tasks.score import score_pool  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from test_score import make_pool  # noqa: E402

CHILD = textwrap.dedent("""
    import sys
    from actprm.store import Store
    from models import EnsemblePRM
    from tasks.score import score_pool

    class ReportingStore(Store):
        def write_score_shard(self, *args, **kwargs):
            shard = super().write_score_shard(*args, **kwargs)
            print(f"committed {shard}", flush=True)  # after COMMIT returned
            return shard

    model, tokenizer = EnsemblePRM.from_pretrained(sys.argv[2], with_tokenizer=True)
    with ReportingStore(sys.argv[1]) as store:
        score_pool(store, "p", model, tokenizer, "v1", batch_size=2, shard_size=4, progress=False)
    print("finished", flush=True)
""")


@pytest.mark.slow
def test_kill_9_mid_run_loses_at_most_the_shard_in_flight(tmp_path):
    db = tmp_path / "k.duckdb"
    model, tokenizer = build_prm("tiny", num_heads=4, seed=0)
    model.save_pretrained(tmp_path / "model", tokenizer)
    with Store(db) as store:
        make_pool(store, "p", 400)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # The repo first, then whatever PYTHONPATH already held (a GPU image's packages installed with --target).
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen([sys.executable, str(script), str(db), str(tmp_path / "model")],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    committed = 0
    deadline = time.monotonic() + 240
    try:
        for line in child.stdout:
            committed += line.startswith("committed")
            if committed >= 3 or time.monotonic() > deadline:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL and committed >= 3
    with Store(db) as store:
        summary = store.score_summary("p", "v1")
        shards = store.score_shards("p", "v1")
        # Every committed shard is complete and accounted for; nothing half-written survives.
        assert summary["scored"] == sum(s["scored"] for s in shards) == 4 * len(shards)
        assert 3 <= len(shards) < 100
        rest = score_pool(store, "p", model, tokenizer, "v1", batch_size=16, shard_size=64, progress=False)
        assert rest.skipped_already_scored == summary["scored"]
        assert rest.scored + rest.skipped_already_scored == 400
        assert store.score_summary("p", "v1")["scored"] == 400
