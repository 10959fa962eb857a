"""Every input format lands as canonical trajectories with the right gold labels."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from actprm.errors import ActPRMError
from actprm.store import Store, trajectory_id
from tasks.ingest import ingest
from tests.data.conftest import actprm_record, write_lines


def gold(db, pool):
    with Store(db, read_only=True) as store:
        ids = store.pool_trajectory_ids(pool)
        rows = store.trajectories(ids)
        labels = dict(store.sql("SELECT trajectory_id, step_labels FROM gold_labels").fetchall())
        members = dict(store.sql("SELECT trajectory_id, source_id FROM pool_members WHERE pool = ?", [pool]).fetchall())
    return [{**r, "step_labels": labels.get(r["id"]), "source_id": members[r["id"]]} for r in rows]


def test_processbench(tmp_path, db):
    path = write_lines(tmp_path / "pb.jsonl", [
        {"id": "gsm8k-0", "generator": "Qwen2-7B", "problem": "1+1?", "steps": ["1+1=3", "so 3"], "label": 0},
        {"id": "gsm8k-1", "problem": "2+2?", "steps": ["2+2=4", "so 4"], "label": -1},
    ])
    s = ingest(db, [str(path)], "pb", emit=False)
    assert (s.format, s.accepted, s.quarantined) == ("processbench", 2, 0)
    rows = {r["source_id"]: r for r in gold(db, "pb")}
    assert rows["gsm8k-0"]["gold_first_error"] == 0 and rows["gsm8k-0"]["step_labels"] == [0]
    assert rows["gsm8k-1"]["gold_first_error"] == -1 and rows["gsm8k-1"]["step_labels"] == [1, 1]


def prmbench_record(idx: str, kind: str, original: list[str], modified: list[str], error_steps: list[int]) -> dict:
    return {"idx": idx, "classification": kind, "original_question": "How many seconds in 2 minutes?",
            "modified_question": "How many seconds in 2 minutes?", "original_process": original,
            "modified_process": modified, "error_steps": error_steps, "modified_steps": error_steps, "reason": "r",
            "question": "How many seconds in 2 minutes?"}


def test_prmbench_as_mr_eval_reads_it(tmp_path, db):
    """PRMBench as distributed: each problem's original comes once (from its redundency line, as mr_eval's
    "correct_<idx>" sample), its "Step k." numbering cut; multi_solutions lines (empty error_steps) are all-correct
    trajectories; error_steps past the process are ignored as mr_eval ignores them, not a reason to quarantine."""
    original = ["A minute is 60 seconds.", "2 * 60 = 120.", "The answer is 120."]
    numbered = [f"Step {k + 1}. {s}" for k, s in enumerate(original)]
    write_lines(tmp_path / "prm" / "circular.jsonl", [prmbench_record(
        "p0", "circular", numbered, ["A minute is 60 seconds.", "Assume 120 and check.", "So 120."], [2, 3])])
    write_lines(tmp_path / "prm" / "redundency.jsonl", [prmbench_record(
        "p0", "redundency", original, ["1. A minute is 60 seconds.", "2. 60 = 60.", "3. 2 * 60 = 120."], [2])])
    write_lines(tmp_path / "prm" / "multi_solutions.jsonl", [
        prmbench_record("p0", "multi_solutions", numbered, ["120 seconds: 2 minutes of 60.", "7.8 is not used."], []),
        prmbench_record("p1", "confidence", ["x"], ["2 * 60 = 130 surely.", "So 130."], [2, 7]),
        prmbench_record("p2", "confidence", ["x"], ["2 * 60 = 120.", "So 120."], [5])])
    s = ingest(db, [str(tmp_path / "prm")], "prm", emit=False)  # a directory: every file, sorted
    assert (s.format, s.lines_read, s.accepted, s.quarantined) == ("prmbench", 5, 5, 0)
    rows = gold(db, "prm")
    assert s.trajectories_added == len(rows) == 6  # 5 modified processes + 1 original
    (orig,) = [r for r in rows if r["source_id"].endswith(":original")]
    assert orig["source_id"] == "p0:original" and orig["steps"] == original
    assert orig["gold_first_error"] == -1 and orig["step_labels"] == [1, 1, 1]
    by_kind = {r["error_kind"]: r for r in rows if r["source_id"].startswith("p0:modified")}
    # error_steps are 1-based: [2] -> first error at index 1; numbering cut as mr_eval's remove_step_prefix does
    assert by_kind["redundency"]["steps"] == ["A minute is 60 seconds.", "60 = 60.", "2 * 60 = 120."]
    assert by_kind["redundency"]["gold_first_error"] == 1 and by_kind["redundency"]["step_labels"] == [1, 0, 1]
    assert by_kind["circular"]["gold_first_error"] == 1 and by_kind["circular"]["step_labels"] == [1, 0, 0]
    # a decimal opening a step is not a step number
    assert by_kind["multi_solutions"]["steps"][1] == "7.8 is not used."
    assert by_kind["multi_solutions"]["gold_first_error"] == -1 and by_kind["multi_solutions"]["step_labels"] == [1, 1]
    conf = {r["source_id"]: r for r in rows if r["error_kind"] == "confidence"}
    assert conf["p1:modified"]["gold_first_error"] == 1 and conf["p1:modified"]["step_labels"] == [1, 0]
    assert conf["p2:modified"]["gold_first_error"] == -1  # its only error step is past the process


def test_prmbench_lines_are_still_checked(tmp_path, db):
    path = write_lines(tmp_path / "prm.jsonl", [
        prmbench_record("p0", "circular", ["a"], ["b", "c"], ["two"]),
        prmbench_record("p1", "redundency", ["a", ""], ["b", "c"], [1]),   # its original has an empty step
        prmbench_record("p2", "circular", ["a", ""], ["b", "c"], [1]),     # an original nobody reads
    ])
    s = ingest(db, [str(path)], "prm", emit=False)
    assert (s.lines_read, s.accepted, s.quarantined) == (3, 1, 2)
    assert dict(s.top_reasons) == {"error_steps must hold step numbers": 1, "a step is empty": 1}


def test_math_shepherd(tmp_path, db):
    q = "Janet has 3 apples and buys 2 more. How many apples?"
    inp = f"{q} Step 1: She has 3 apples. ки\nStep 2: 3 + 2 = 6. ки\nStep 3: The answer is: 6 ки"
    lab = f"{q} Step 1: She has 3 apples. +\nStep 2: 3 + 2 = 6. -\nStep 3: The answer is: 6 -"
    path = write_lines(tmp_path / "ms.jsonl", [{"input": inp, "label": lab, "task": "GSM8K"}])
    s = ingest(db, [str(path)], "ms", emit=False)
    assert (s.format, s.accepted) == ("math_shepherd", 1)
    (row,) = gold(db, "ms")
    assert row["question"] == q
    assert row["steps"] == ["Step 1: She has 3 apples.", "Step 2: 3 + 2 = 6.", "Step 3: The answer is: 6"]
    assert row["gold_first_error"] == 1 and row["step_labels"] == [1, 0, 0]


def test_trl_stepwise_and_unlabeled(tmp_path, db):
    trl = write_lines(tmp_path / "trl.jsonl", [{"prompt": "3*3?", "completions": ["3*3=9", "so 9"], "labels": [True, True]},
                                               {"prompt": "3*4?", "completions": ["3*4=13", "so 13"], "labels": [False, False]}])
    s = ingest(db, [str(trl)], "trl", emit=False)
    assert (s.format, s.accepted) == ("trl_stepwise", 2)
    assert sorted(r["gold_first_error"] for r in gold(db, "trl")) == [-1, 0]
    un = write_lines(tmp_path / "u.jsonl", [{"question": "q1", "steps": ["a", "b"]}, {"question": "q2", "steps": ["c"]}])
    s = ingest(db, [str(un)], "u", emit=False)
    assert (s.format, s.accepted, s.labeled_fraction) == ("unlabeled", 2, 0.0)
    assert all(r["gold_first_error"] is None for r in gold(db, "u"))


def test_format_override_and_undetectable(tmp_path, db):
    path = write_lines(tmp_path / "a.jsonl", [actprm_record(1, first_error=1)])
    s = ingest(db, [str(path)], "as-unlabeled", format="unlabeled", emit=False)
    assert (s.format, s.labeled_fraction) == ("unlabeled", 0.0)
    odd = write_lines(tmp_path / "odd.jsonl", [{"foo": 1}])
    with pytest.raises(ActPRMError, match="cannot detect the input format"):
        ingest(db, [str(odd)], "odd", emit=False)


def test_ids_match_python_twin_with_non_ascii_and_quotes(tmp_path, db):
    q = 'Ein "Zug" fährt 60 km/h — 中文? \\ back\'slash'
    steps = ["é = 1 🙂", 'say "hi"\ttab\nnewline', "\u2028 separator"]
    path = write_lines(tmp_path / "x.jsonl", [{"question": q, "steps": steps}])
    ingest(db, [str(path)], "x", emit=False)
    (row,) = gold(db, "x")
    assert row["question"] == q and row["steps"] == steps
    assert row["id"] == trajectory_id(q, steps)


def test_compressed_parquet_and_glob_inputs(tmp_path, db):
    recs = [actprm_record(i, first_error=(i % 3) - 1) for i in range(12)]
    lines = "".join(json.dumps(r) + "\n" for r in recs[:4]).encode()
    (tmp_path / "in").mkdir()
    with gzip.open(tmp_path / "in" / "a.jsonl.gz", "wb") as f:
        f.write(lines)
    (tmp_path / "in" / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps(r) + "\n" for r in recs[4:8]).encode()))
    pq.write_table(pa.Table.from_pylist(recs[8:]), tmp_path / "in" / "c.parquet")
    s = ingest(db, [str(tmp_path / "in" / "*")], "mixed", emit=False)
    assert (s.lines_read, s.accepted, s.quarantined, s.duplicates) == (12, 12, 0, 0)
    assert sorted(r["source_id"] for r in gold(db, "mixed")) == sorted(f"t{i}" for i in range(12))


def test_unreadable_inputs_are_one_line_errors(tmp_path, db):
    good = b"".join(json.dumps(actprm_record(i)).encode() + b"\n" for i in range(2000))
    blob = gzip.compress(good)
    (tmp_path / "cut.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    for paths, pattern in [([str(tmp_path / "cut.jsonl.gz")], "cannot read"),
                           ([str(tmp_path / "missing.jsonl")], "not found"),
                           ([str(tmp_path / "*.nothing")], "no input files match")]:
        with pytest.raises(ActPRMError, match=pattern) as err:
            ingest(db, paths, "bad", format="actprm", emit=False)
        assert "\n" not in str(err.value)
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(ActPRMError, match="cannot read"):
        ingest(db, [str(tmp_path / "fake.parquet")], "bad", emit=False)
    with Store(db, read_only=True) as store:
        assert not store.pool_exists("bad")


def test_the_eval_split_holds_out_whole_problems(tmp_path, db):
    """PRMBench modifies each PRM800K problem (its idx) in up to 8 ways, with slightly different question texts:
    held out by trajectory, 92% of the real eval split had its question in train. Every view of one idx, and every
    trajectory of one question, must land in the same split; a problem with one trajectory is split as before
    (by its own id), so pools of distinct problems keep their split."""
    from tasks.select import prepare_eval_split

    lines = []
    for i in range(60):
        original = [f"Problem {i}: a minute is 60 seconds.", f"{i} * 60 = {i * 60}."]
        for kind in ("circular", "confidence", "redundency"):
            rec = prmbench_record(f"p{i}", kind, original, [original[0], f"{i} * 60 = {i * 60 + 1}, {kind}."], [2])
            rec["modified_question"] = f"Problem {i}, as {kind} words it."  # the text differs, the problem does not
            lines.append(rec)
    write_lines(tmp_path / "prm.jsonl", lines)
    write_lines(tmp_path / "shared.jsonl", [actprm_record(i, question=f"Question {i // 4}") for i in range(80)])
    write_lines(tmp_path / "alone.jsonl", [actprm_record(i) for i in range(200)])
    ingest(db, [str(tmp_path / "prm.jsonl")], "prm", emit=False)
    ingest(db, [str(tmp_path / "shared.jsonl")], "shared", emit=False)
    ingest(db, [str(tmp_path / "alone.jsonl")], "alone", emit=False)
    with Store(db) as store:
        for pool in ("prm", "shared", "alone"):
            counts = prepare_eval_split(store, pool, 0.25, seed=0)
            assert 0 < counts["eval"] < counts["train"], (pool, counts)
        problems = store.sql(
            "SELECT split_part(m.source_id, ':', 1) AS idx, count(DISTINCT m.split) FROM pool_members m "
            "WHERE m.pool = 'prm' GROUP BY idx").fetchall()
        assert len(problems) == 60 and all(n == 1 for _, n in problems)
        questions = store.sql(
            "SELECT t.question, count(DISTINCT m.split) FROM pool_members m JOIN trajectories t ON t.id = m.trajectory_id "
            "WHERE m.pool = 'shared' GROUP BY t.question").fetchall()
        assert len(questions) == 20 and all(n == 1 for _, n in questions)
        # One trajectory per problem: the split a per-trajectory hash of (seed, id) gives.
        per_trajectory = store.sql(
            "SELECT count(*) FROM pool_members WHERE pool = 'alone' "
            "AND (split = 'eval') != (hash('0' || trajectory_id) % 10000 < 2500)").fetchone()[0]
        assert per_trajectory == 0


def _prm800k(problem, steps, finish_reason="found_error"):
    """A raw PRM800K line as its README describes it (github.com/openai/prm800k)."""
    return {"labeler": "l0", "timestamp": "2022-07-17T16:56:51", "generation": None,
            "is_quality_control_question": False, "is_initial_screening_question": False,
            "question": {"problem": problem, "ground_truth_answer": "120"},
            "label": {"steps": steps, "total_time": 1000, "finish_reason": finish_reason}}


def _step(*completions, chosen=None, human=None):
    return {"completions": [{"text": t, "rating": r, "flagged": False} for t, r in completions],
            "human_completion": None if human is None else {"text": human, "rating": None, "source": "human",
                                                            "flagged": False, "corrected_rating": None},
            "chosen_completion": chosen}


def test_prm800k_raw_follows_the_chosen_completions(tmp_path, db):
    """Each step follows its chosen completion, else the human one, else (where labeling stopped) its first
    completion rated -1; the first error is the first followed step rated -1, a neutral 0 is not an error."""
    found_error = _prm800k("How many seconds in 2 minutes?", [
        _step(("A minute is 60 s.", 1), ("Minutes are long.", 0), chosen=0),
        _step(("Let me think.", 0), chosen=0),                                   # neutral: not an error
        _step(("2 * 60 = 100.", -1), human="2 * 60 = 120."),                     # a labeler's fix is followed
        _step(("So 120 s, done.", 0), ("So 240 s.", -1), ("So 12 s.", -1)),       # stopped: first -1 followed
    ])
    solved = _prm800k("What is 3 + 4?", [_step(("3 + 4 = 7.", 1), chosen=0), _step(("# Answer\n\n7", 1), chosen=0)],
                      finish_reason="solution")
    bad = [_prm800k("Bad?", [_step(("x", 1), chosen=0)], finish_reason="bad_problem"),
           _prm800k("Unrated?", [_step(("x", None), chosen=0)]),
           _prm800k("Nothing to follow?", [_step(chosen=None)])]
    path = write_lines(tmp_path / "phase2_train.jsonl", [found_error, solved, *bad])
    s = ingest(db, [str(path)], "prm800k", emit=False)
    assert (s.format, s.lines_read, s.accepted, s.quarantined) == ("prm800k", 5, 2, 3)
    assert dict(s.top_reasons) == {"the labeler marked the problem bad (finish_reason)": 1,
                                   "a followed completion has no rating -1, 0 or 1": 1,
                                   "a step has no completion to follow": 1}
    rows = {r["question"]: r for r in gold(db, "prm800k")}
    err = rows["How many seconds in 2 minutes?"]
    assert err["steps"] == ["A minute is 60 s.", "Let me think.", "2 * 60 = 120.", "So 240 s."]
    assert err["gold_first_error"] == 3 and err["step_labels"] == [1, 1, 1, 0]
    ok = rows["What is 3 + 4?"]
    assert ok["gold_first_error"] == -1 and ok["step_labels"] == [1, 1]
