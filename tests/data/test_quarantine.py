"""Bad input never disappears: each bad line is quarantined with a reason, and a + q + d = lines read."""

from __future__ import annotations

import json

from actprm.store import Store
from tasks.ingest import ingest
from tests.data.conftest import actprm_record, write_lines


def reasons(db, pool) -> dict[int, str]:
    with Store(db, read_only=True) as store:
        return {r["line_no"]: r["reason"] for r in store.quarantine_sample(pool, 1000)}


def balanced(s) -> bool:
    return s.accepted + s.quarantined + s.duplicates == s.lines_read


BLANK_STEP = "a step is blank (only whitespace or zero-width characters)"
BAD_LINES = [
    ('{"question": "q", "steps": ["a"', "malformed JSON"),
    ("", "blank line"),
    ("   \t ", "blank line"),
    ("[1, 2, 3]", "not a JSON object"),
    ('"just a string"', "not a JSON object"),
    ({"steps": ["a"], "hard_labels": [1]}, "question is missing or null"),
    ({"question": None, "steps": ["a"], "hard_labels": [1]}, "question is missing or null"),
    ({"question": 42, "steps": ["a"], "hard_labels": [1]}, "question is not a string"),
    ({"question": "q", "hard_labels": [1]}, "steps is missing or null"),
    ({"question": "q", "steps": "a single string", "hard_labels": [1]}, "steps is not a list"),
    ({"question": "q", "steps": [], "hard_labels": [1]}, "steps is empty"),
    ({"question": "q", "steps": ["a", None], "hard_labels": [1, 1]}, "steps has a null step"),
    ({"question": "q", "steps": ["a", 7], "hard_labels": [1, 1]}, "steps has a step that is not a string"),
    ({"question": "q", "steps": ["a", ""], "hard_labels": [1, 1]}, "a step is empty"),
    ({"question": "q", "steps": ["a", "b"], "hard_labels": [1, 2]}, "hard_labels must hold only 0/1"),
    ({"question": "q", "steps": ["a"], "hard_labels": [1, 0]}, "hard_labels has more labels than steps"),
    ({"question": "q", "steps": ["a", "b"], "hard_labels": "01"}, "hard_labels is not a list"),
    ({"question": "q", "steps": ["a", "b"], "hard_labels": [1, 0], "first_error": 0}, "first_error disagrees with hard_labels"),
    # a key the format reads, twice: DuckDB would store the first value where Python's json reads the last
    ('{"question": "q", "steps": ["a"], "hard_labels": [1], "question": "r"}', "duplicate key 'question'"),
    ('{"question": "q", "steps": ["a"], "hard_labels": [1], "hard_labels": [0]}', "duplicate key 'hard_labels'"),
    ({"question": "q", "steps": ["a", " \t\n "], "hard_labels": [1, 1]}, BLANK_STEP),
    ({"question": "q", "steps": ["\u200b\u200d\ufeff", "a"], "hard_labels": [1, 1]}, BLANK_STEP),  # zero-width
    ({"question": "\u3000\u00a0\u2060", "steps": ["a"], "hard_labels": [1]}, "question is empty"),
]


def test_each_bad_kind_is_quarantined_with_its_reason(tmp_path, db):
    lines = []
    for k, (line, _) in enumerate(BAD_LINES):
        lines += [actprm_record(k), line]
    path = write_lines(tmp_path / "in.jsonl", lines)
    s = ingest(db, [str(path)], "p", format="actprm", emit=False)
    n = len(BAD_LINES)
    assert (s.lines_read, s.accepted, s.quarantined, s.duplicates) == (2 * n, n, n, 0)
    assert reasons(db, "p") == {2 * (k + 1): reason for k, (_, reason) in enumerate(BAD_LINES)}


def test_hostile_mixed_file(tmp_path, db):
    limits = dict(max_question_chars=1000, max_steps=50, max_step_chars=500, quarantine_raw_chars=100)
    lines = [actprm_record(i, first_error=(i % 4) - 1) for i in range(20)]
    lines += [actprm_record(3, first_error=2)]                       # same as line 4: duplicate
    lines += [{"question": "x" * 200_000, "steps": ["a"]}]           # 200 KB question
    lines += [{"question": "many", "steps": ["s"] * 5000}]           # 5,000 steps
    lines += [{"question": "long step", "steps": ["é" * 501]}]       # a step over the limit (in chars)
    lines += ["{not json", "", "null", "ü" * 300, json.dumps({"question": "é" * 60, "steps": None})]
    path = write_lines(tmp_path / "hostile.jsonl", lines)
    s = ingest(db, [str(path)], "h", format="actprm", emit=False, **limits)
    assert balanced(s) and s.lines_read == len(lines)
    assert (s.accepted, s.duplicates, s.quarantined) == (20, 1, 8)
    got = reasons(db, "h")
    assert got[22] == "question longer than 1000 chars"
    assert got[23] == "more than 50 steps"
    assert got[24] == "a step longer than 500 chars"
    with Store(db, read_only=True) as store:
        raw = {r["line_no"]: r["raw"] for r in store.quarantine_sample("h", 100)}
    assert len(raw[22]) == 100 and len(raw[28]) == 100 and raw[28] == "ü" * 100  # cut by chars, never mid-UTF-8


def test_invalid_utf8_and_blank_lines_are_counted(tmp_path, db):
    good = [json.dumps(actprm_record(i)).encode() for i in range(3)]
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(good[0] + b"\n\n" + b'{"question": "\xff\xfe", "steps": ["a"]}\n' + good[1] + b"\r\n" + good[2])
    s = ingest(db, [str(path)], "b", format="actprm", emit=False)
    assert (s.lines_read, s.accepted, s.quarantined) == (5, 3, 2)
    assert reasons(db, "b") == {2: "blank line", 3: "not valid UTF-8"}


def test_reingest_is_idempotent_and_dedup_is_per_pool(tmp_path, db):
    path = write_lines(tmp_path / "p.jsonl", [actprm_record(i) for i in range(5)] + ["oops"])
    first = ingest(db, [str(path)], "a", emit=False)
    assert (first.accepted, first.quarantined, first.duplicates) == (5, 1, 0)
    again = ingest(db, [str(path)], "a", emit=False)
    assert (again.accepted, again.quarantined, again.duplicates, again.trajectories_added) == (0, 1, 5, 0)
    other = ingest(db, [str(path)], "b", emit=False)  # another pool: members again, trajectories stored once
    assert (other.accepted, other.duplicates) == (5, 0)
    with Store(db, read_only=True) as store:
        assert store.pool_size("a") == 5 and store.pool_size("b") == 5
        assert store.sql("SELECT count(*) FROM trajectories").fetchone()[0] == 5
        assert store.quarantine_count("a") == 1
        assert store.pools()[0]["status"] == "registered"


def test_keys_stay_unique_without_primary_keys(tmp_path, db):
    """trajectories / pool_members / gold_labels have no PRIMARY KEY (ingest speed): ingest's own dedupe
    must keep their keys unique across in-file repeats, re-ingests, overlapping pools and relabeling sources."""
    from actprm.testing.pools import make_pool

    a = write_lines(tmp_path / "a.jsonl", [actprm_record(i) for i in range(5)] + [actprm_record(2)])
    # overlaps a (3, 4) with other gold labels: the first source to label a trajectory keeps its label
    b = write_lines(tmp_path / "b.jsonl", [actprm_record(i, first_error=1) for i in range(3, 8)])
    assert ingest(db, [str(a)], "a", emit=False).duplicates == 1
    ingest(db, [str(a)], "a", emit=False)
    ingest(db, [str(b)], "b", emit=False)
    ingest(db, [str(a), str(b)], "b", emit=False)
    with Store(db) as store:  # the test-pool writer must not duplicate rows either
        make_pool(store, "b", [{"question": f"What is {i} plus a few numbers?",
                               "steps": [f"Step {k + 1} of trajectory {i}: {i} + {k} = {i + k}." for k in range(3)],
                               "first_error": -1} for i in (0, 7)])
    with Store(db, read_only=True) as store:
        for table, key in (("trajectories", "id"), ("pool_members", "(pool, trajectory_id)"),
                           ("gold_labels", "trajectory_id")):
            total, distinct = store.sql(f"SELECT count(*), count(DISTINCT {key}) FROM {table}").fetchone()
            assert total == distinct, table
        assert store.sql("SELECT count(*) FROM trajectories").fetchone()[0] == 8
        assert store.pool_size("a") == 5 and store.pool_size("b") == 8
        labels = dict(store.sql("SELECT t.question, g.first_error FROM gold_labels g "
                                "JOIN trajectories t ON t.id = g.trajectory_id").fetchall())
        assert labels["What is 3 plus a few numbers?"] == -1 and labels["What is 6 plus a few numbers?"] == 1


def test_a_repeated_key_the_format_does_not_read_costs_nothing(tmp_path, db):
    rec = json.dumps(actprm_record(0))[:-1] + ', "note": 1, "note": 2}'
    s = ingest(db, [str(write_lines(tmp_path / "n.jsonl", [rec]))], "n", format="actprm", emit=False)
    assert (s.accepted, s.quarantined) == (1, 0)
