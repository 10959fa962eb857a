"""Scoring a pool into a real DuckDB: flags by the ActPRM rule, export, resume after interruption."""

from __future__ import annotations

import os
import random

import pyarrow.parquet as pq
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from actprm.errors import ActPRMError  # noqa: E402
from models.errors import ModelError  # noqa: E402
from actprm.store import Store, trajectory_id  # noqa: E402
from models import build_prm  # noqa: E402
from models.uncertainty import trajectory_uncertain  # noqa: E402
from tasks.score import export_scores, score_pool  # noqa: E402


def make_pool(store: Store, name: str, n: int, seed: int = 0, long_every: int = 0) -> list[str]:
    """Insert a small arithmetic pool straight into the schema (the ingest stage is not needed here)."""
    rng = random.Random(seed)
    ids = []
    store.sql("INSERT INTO pools (name, format, status) VALUES (?, 'test', 'registered')", [name])
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        steps = [f"{a} + {b} = {a + b}", f"{a + b} * 2 = {2 * (a + b) + rng.choice([0, 1])}", "done"]
        if long_every and i % long_every == 0:
            steps += [f"check {k}: " + "x" * 40 for k in range(8)]
        question = f"Compute ({a} + {b}) * 2. #{i}"
        tid = trajectory_id(question, steps)
        store.sql("INSERT INTO trajectories VALUES (?, ?, ?, ?)", [tid, question, steps, len(steps)])
        store.sql("INSERT INTO pool_members (pool, trajectory_id, line_no, split) VALUES (?, ?, ?, ?)",
                  [name, tid, i, "train" if i % 5 else "eval"])
        store.sql("INSERT INTO gold_labels (trajectory_id, first_error) VALUES (?, ?)", [tid, rng.choice([-1, 1])])
        ids.append(tid)
    return ids


@pytest.fixture(scope="module")
def prm():
    torch.manual_seed(0)
    return build_prm("tiny", num_heads=8, seed=0)


def agreeing_sharp_heads(scale: float = 30.0, seed: int = 0):
    """A tiny PRM whose heads nearly agree and whose logits are scaled up, so that under the paper's
    thresholds (0.95, 0.005) some trajectories are confident and others not (an untrained ensemble
    sits near 0.5 and would flag everything)."""
    model, tokenizer = build_prm("tiny", num_heads=8, seed=seed)
    with torch.no_grad():
        for name in ("w1", "b1", "w2", "b2", "w3", "b3"):
            p = getattr(model, name)
            p.copy_(p[:1].expand_as(p))
        model.w3.mul_(scale)
        model.b3.mul_(scale)
        model.w3[0].mul_(1.02)  # a little disagreement
    return model, tokenizer


def test_scores_and_export_reproduce_the_rule(tmp_path):
    model, tokenizer = agreeing_sharp_heads()
    with Store(tmp_path / "a.duckdb") as store:
        ids = make_pool(store, "p", 40, long_every=7)
        summary = score_pool(store, "p", model, tokenizer, "v1", batch_size=8, shard_size=16, max_length=96,
                             progress=False)
        assert summary.scored == 40 and summary.skipped_already_scored == 0 and summary.shards == 3
        assert summary.truncated == len(range(0, 40, 7))  # exactly the long trajectories lose steps
        assert summary.tokens_per_s > 0 and summary.as_dict()["pool"] == "p"
        assert [s["shard"] for s in store.score_shards("p", "v1")] == [0, 1, 2]
        n = export_scores(store, "p", "v1", tmp_path / "out" / "scores.parquet")
        stats = store.score_summary("p", "v1")
    assert n == 40
    table = pq.read_table(tmp_path / "out" / "scores.parquet").to_pylist()
    assert [r["id"] for r in table] == ids
    assert stats["uncertain"] == summary.uncertain == sum(r["uncertain"] for r in table)
    for r in table:
        assert len(r["mu"]) == len(r["sigma"]) == r["scored_steps"]
        assert r["scored_steps"] + r["truncated_steps"] == (11 if ids.index(r["id"]) % 7 == 0 else 3)
        assert r["uncertain"] == trajectory_uncertain(torch.tensor(r["mu"], dtype=torch.float64),
                                                      torch.tensor(r["sigma"], dtype=torch.float64), 0.95, 0.005)
    assert 0 < summary.uncertain < 40  # both verdicts occur, so the check above means something
    assert summary.uncertain_this_run == summary.uncertain
    assert summary.as_dict()["uncertain_fraction"] == pytest.approx(summary.uncertain / 40)


def test_ranking_orders_by_acquisition_and_skips_what_this_judge_and_prompt_labeled(tmp_path, prm):
    model, tokenizer = prm
    with Store(tmp_path / "b.duckdb") as store:
        make_pool(store, "p", 20)
        score_pool(store, "p", model, tokenizer, "v1", strategy="bald", batch_size=8, progress=False)
        rows = {r["trajectory_id"]: r for r in store.scores_for("p", "v1")}
        ranked = store.rank_for_labeling("p", "v1", split=None)
        assert set(ranked) == {t for t, r in rows.items() if r["uncertain"]}
        acq = [rows[t]["acquisition"] for t in ranked]
        assert acq == sorted(acq, reverse=True)
        store.sql("INSERT INTO judge_labels (trajectory_id, judge_model, prompt_version, status, first_error) "
                  "VALUES (?, 'judge-x', 'v', 'labeled', -1)", [ranked[0]])
        assert ranked[0] not in store.rank_for_labeling("p", "v1", split=None, labeled_by=("judge-x", "v"))
        # another prompt version is another cache key: its labels do not count
        assert ranked[0] in store.rank_for_labeling("p", "v1", split=None, labeled_by=("judge-x", "v2"))
        assert store.rank_for_labeling("p", "v1", split=None, limit=3) == ranked[:3]
        everything = store.rank_for_labeling("p", "v1", split=None, only_uncertain=False)
        assert set(everything) == set(rows) and set(ranked) <= set(everything)


def test_resume_scores_only_the_rest(tmp_path, prm):
    model, tokenizer = prm
    path = tmp_path / "c.duckdb"
    with Store(path) as store:
        make_pool(store, "p", 30)
        first = score_pool(store, "p", model, tokenizer, "v1", batch_size=4, shard_size=8, max_shards=1, progress=False)
    assert first.scored == 8
    with Store(path) as store:  # a crash in the second shard loses only that shard
        real_write = store.write_score_shard
        calls = []

        def crash_on_second(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt("killed")
            return real_write(*args, **kwargs)

        store.write_score_shard = crash_on_second
        with pytest.raises(KeyboardInterrupt):
            score_pool(store, "p", model, tokenizer, "v1", batch_size=4, shard_size=8, progress=False)
    with Store(path) as store:
        assert store.score_summary("p", "v1")["scored"] == 16
        rest = score_pool(store, "p", model, tokenizer, "v1", batch_size=4, shard_size=8, progress=False)
        assert rest.scored == 14 and rest.skipped_already_scored == 16
        assert rest.scored + rest.skipped_already_scored == store.pool_size("p")
        # `uncertain` describes the whole pool under this version, earlier shards included.
        assert rest.uncertain == store.score_summary("p", "v1")["uncertain"] == len(store.rank_for_labeling("p", "v1", split=None))
        again = score_pool(store, "p", model, tokenizer, "v1", progress=False)
        assert again.scored == 0 and again.skipped_already_scored == 30
        # Another model version scores everything afresh.
        assert score_pool(store, "p", model, tokenizer, "v2", progress=False).scored == 30


def test_scores_do_not_depend_on_batching(tmp_path, prm):
    model, tokenizer = prm
    with Store(tmp_path / "d.duckdb") as store:
        make_pool(store, "p", 12, long_every=3)
        score_pool(store, "p", model, tokenizer, "a", batch_size=1, progress=False)
        score_pool(store, "p", model, tokenizer, "b", batch_size=12, shard_size=5, progress=False)
        a, b = store.scores_for("p", "a"), store.scores_for("p", "b")
    for x, y in zip(a, b):
        assert x["uncertain"] == y["uncertain"] and x["predicted_first_error"] == y["predicted_first_error"]
        assert torch.allclose(torch.tensor(x["mu"]), torch.tensor(y["mu"]), atol=1e-5)


def test_scoring_through_an_accelerator_matches_plain_scoring(tmp_path, prm):
    """The accelerate path (one process on CPU here) writes the same scores as the plain path."""
    from accelerate import Accelerator

    model, tokenizer = prm
    with Store(tmp_path / "acc.duckdb") as store:
        make_pool(store, "p", 10)
        score_pool(store, "p", model, tokenizer, "plain", batch_size=4, progress=False)
        summary = score_pool(store, "p", model, tokenizer, "acc", batch_size=4, shard_size=4, progress=False,
                             accelerator=Accelerator(cpu=True))
        plain, acc = store.scores_for("p", "plain"), store.scores_for("p", "acc")
    assert summary.scored == 10 and summary.shards == 3
    assert [r["mu"] for r in plain] == [r["mu"] for r in acc]


def test_user_errors_are_clear(tmp_path, prm):
    model, tokenizer = prm
    from models.tiny_tokenizer import build_tiny_tokenizer

    with Store(tmp_path / "e.duckdb") as store:
        make_pool(store, "p", 2)
        with pytest.raises(ActPRMError, match="unknown pool"):
            score_pool(store, "nope", model, tokenizer, "v1", progress=False)
        with pytest.raises(ModelError, match="acquisition strategy"):
            score_pool(store, "p", model, tokenizer, "v1", strategy="coreset", progress=False)
        with pytest.raises(ModelError, match="separator"):
            score_pool(store, "p", model, build_tiny_tokenizer(), "v1", progress=False)


def test_score_stage_from_a_saved_model_and_export_stage(tmp_path):
    """The flows' entry points: a saved model directory in, the ScoreSummary and a Parquet file out."""
    from actprm.config import Settings
    from tasks.score import export_stage, score_stage

    settings = Settings(home=tmp_path / "home")
    model, tokenizer = build_prm("tiny", num_heads=4, seed=1)
    model_dir = model.save_pretrained(tmp_path / "model", tokenizer)
    with Store(settings.duckdb_path) as store:
        make_pool(store, "p", 10)
    summary = score_stage(settings, "p", str(model_dir), "7")
    assert summary.scored == 10 and summary.model_version == "7" and "uncertain_fraction" in summary.as_dict()
    again = score_stage(settings, "p", str(model_dir), "7")
    assert again.scored == 0 and again.skipped_already_scored == 10 and again.uncertain == summary.uncertain
    out = export_stage(settings, "p", "7", tmp_path / "scores.parquet")
    assert out["rows"] == 10 and pq.read_table(out["path"]).num_rows == 10
