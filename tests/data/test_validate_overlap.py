"""The contract runs while the insert writes, on the pool's facts read from the stage before it (tasks.ingest):
those facts must be the facts of the pool as stored after the insert, row for row, in every dedupe case."""

from __future__ import annotations

import pandas as pd

from actprm.formats import FORMATS
from actprm.store import Store
from tasks import ingest as ing
from tasks import validate as validation
from tests.data.conftest import actprm_record, write_lines


def _unlabeled(i: int) -> dict:
    rec = actprm_record(i)
    return {"question": rec["question"], "steps": rec["steps"]}


def _all(facts: validation.PoolFacts) -> pd.DataFrame:
    frame = pd.concat(facts.shards, ignore_index=True)
    return frame.sort_values("id", ignore_index=True)


def test_facts_read_from_the_stage_are_the_facts_of_the_pool_the_insert_leaves(tmp_path, db):
    # Pool "a": labeled 0-4, and 10-11 stored without labels.
    ing.ingest(db, [str(write_lines(tmp_path / "a.jsonl", [actprm_record(i, first_error=i % 3 - 1) for i in range(5)]))],
               "a", emit=False)
    ing.ingest(db, [str(write_lines(tmp_path / "u.jsonl", [_unlabeled(10), _unlabeled(11)]))], "a",
               format="unlabeled", emit=False)
    # Pool "b" already holds 20 (labeled) and 21 (unlabeled).
    ing.ingest(db, [str(write_lines(tmp_path / "b0.jsonl", [actprm_record(20, first_error=1)]))], "b", emit=False)
    ing.ingest(db, [str(write_lines(tmp_path / "b1.jsonl", [_unlabeled(21)]))], "b", format="unlabeled", emit=False)
    lines = [
        actprm_record(20, first_error=-1),                 # already in the pool, another label: the stored one stays
        actprm_record(21, first_error=0),                  # in the pool unlabeled: stays unlabeled (not re-added)
        actprm_record(1, first_error=2),                   # stored by "a" with a gold label: that label is kept
        actprm_record(10, first_error=1),                  # stored by "a" unlabeled: this ingest labels it
        actprm_record(30, first_error=-1), actprm_record(30, first_error=0),  # twice in the input: the first wins
        actprm_record(31, n_steps=5, first_error=4),       # new
        "not json",                                        # quarantined
        actprm_record(32, id="t32-b"),                     # new
    ]
    path = write_lines(tmp_path / "b2.jsonl", lines)
    fmt = FORMATS.get("actprm")
    files = ing.resolve_inputs([str(path)])
    summary = ing.IngestSummary(pool="b", format=fmt.name)
    with Store(db) as store:
        stage = ing.stage(store, files, fmt, ing.IngestLimits(), temporary=True, tmp_dir=tmp_path / "tmp")
        ing.quarantine(store, stage, "b", fmt, files, ing.content_hash(files), summary)
        before = validation.pool_facts(store, "b", shard_rows=3, stage=stage)
        ing.insert(store, stage, "b", fmt, summary)
        after = validation.pool_facts(store, "b", shard_rows=3)
        stats = store.pool_label_stats("b")
    assert (summary.accepted, summary.duplicates, summary.quarantined) == (5, 3, 1)
    assert before.trajectories == after.trajectories == stats["trajectories"] == 7
    assert before.labeled_fraction == after.labeled_fraction == stats["labeled_fraction"]
    assert len(before.shards) == len(after.shards) == 3
    for shard_before, shard_after in zip(before.shards, after.shards):  # the same rows in the same shards
        assert sorted(shard_before["id"]) == sorted(shard_after["id"])
    pd.testing.assert_frame_equal(_all(before), _all(after))
    # Labeling trajectory 10 moved pool a's gold error rate: the drift reference read before the insert is stale,
    # which is why `ingest` checks it afterwards and validates the stored pool again when it moved.
    assert before.reference != after.reference


def test_an_ingest_that_moves_the_drift_reference_reports_the_contract_of_the_stored_pool(tmp_path, db):
    """Gold labels given to another registered pool's trajectories change what drift compares with: the verdict
    is the one validating the stored pool gives."""
    ing.ingest(db, [str(write_lines(tmp_path / "a.jsonl", [_unlabeled(i) for i in range(4)]))], "a",
               format="unlabeled", emit=False)
    s = ing.ingest(db, [str(write_lines(tmp_path / "b.jsonl", [actprm_record(i, first_error=0) for i in range(4)]))],
                   "b", emit=False)
    with Store(db) as store:
        again = validation.validate_pool(store, "b", limits=ing.IngestLimits())
    assert s.status == "registered" and s.validated_rows == 4
    assert (s.failures, s.warnings) == (again.failures, again.warnings)
