"""Inputs that used to slip past the line accounting, and an ingest killed between the flow's tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import zstandard

from actprm.errors import ActPRMError, UnknownPool
from actprm.store import Store
from tasks.ingest import ingest
from tests.data.conftest import actprm_record, write_lines


def test_a_cut_zstd_file_is_refused_whole_not_ingested_in_part(tmp_path, db):
    lines = b"".join(json.dumps(actprm_record(i)).encode() + b"\n" for i in range(2000))
    whole = zstandard.ZstdCompressor().compress(lines)
    (tmp_path / "whole.jsonl.zst").write_bytes(whole)
    (tmp_path / "cut.jsonl.zst").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ActPRMError, match=r"cut.jsonl.zst: the zstd stream ends mid-frame"):
        ingest(db, [str(tmp_path / "cut.jsonl.zst")], "p", emit=False)
    with Store(db, read_only=True) as store:
        assert store.pool_status("p") is None and store.sql("SELECT count(*) FROM trajectories").fetchone()[0] == 0
    s = ingest(db, [str(tmp_path / "whole.jsonl.zst")], "p", emit=False)
    assert (s.lines_read, s.accepted) == (2000, 2000)


def test_a_carriage_return_inside_a_line_costs_that_line_at_most(tmp_path, db):
    good = [json.dumps(actprm_record(i)) for i in range(3)]
    spaced = json.dumps(actprm_record(3)).replace('", "steps"', '",\r"steps"')  # CR as JSON whitespace: valid
    in_string = json.dumps(actprm_record(4)).replace("plus a few", "plus\ra few")  # a raw CR in a string: not JSON
    path = tmp_path / "cr.jsonl"
    path.write_bytes(("\r\n".join([good[0], spaced, in_string, good[1]]) + "\n" + good[2] + "\n").encode())
    s = ingest(db, [str(path)], "p", format="actprm", emit=False)
    assert (s.lines_read, s.accepted, s.quarantined) == (5, 4, 1)
    with Store(db, read_only=True) as store:
        assert {r["line_no"]: r["reason"] for r in store.quarantine_sample("p", 10)} == {3: "malformed JSON"}
        questions = {q for (q,) in store.sql("SELECT question FROM trajectories").fetchall()}
    assert actprm_record(3)["question"] in questions  # the values of the re-serialized line, unchanged


def test_reingesting_a_file_under_another_name_does_not_count_its_quarantine_twice(tmp_path, db, monkeypatch):
    write_lines(tmp_path / "q.jsonl", [actprm_record(0), "{not json"])
    monkeypatch.chdir(tmp_path)
    ingest(db, ["q.jsonl"], "p", emit=False)
    again = ingest(db, [str(tmp_path / "." / "q.jsonl")], "p", emit=False)
    with Store(db, read_only=True) as store:
        assert again.quarantined == 1 == store.quarantine_count("p")
        assert store.quarantine_reasons("p") == again.top_reasons and sum(n for _, n in again.top_reasons) == 1


def test_an_ingest_killed_between_tasks_leaves_a_pool_nobody_uses_until_a_rerun_finishes_it(tmp_path, db):
    """kill -9 after the quarantine task committed the pool's row and before the insert: the pool is `ingesting`
    with none of its lines, and its stage table is in the DuckDB file. Nothing may score, label or study it; the
    rerun drops the dead process's stage, stores every line once and registers the pool."""
    path = write_lines(tmp_path / "in.jsonl", [actprm_record(i) for i in range(30)] + ["{oops"])
    killed = textwrap.dedent(f"""
        import os, signal
        from actprm.store import Store
        from actprm.formats import FORMATS
        from tasks import ingest as ing
        files = ing.resolve_inputs([{str(path)!r}])
        fmt = FORMATS.get("actprm")
        limits = ing.IngestLimits(20_000, 200, 8_000, 2_000)
        with Store({str(db)!r}) as store:
            stage = ing.stage(store, files, fmt, limits)
        with Store({str(db)!r}) as store:
            summary = ing.IngestSummary(pool="p", format=fmt.name, files=[f.path for f in files])
            ing.quarantine(store, stage, "p", fmt, files, ing.content_hash(files), summary)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", killed], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]

    with Store(db) as store:
        assert store.pool_status("p") == "ingesting" and store.pool_size("p") == 0
        assert len(store.stage_tables("ingest_stage_")) == 1
        with pytest.raises(ActPRMError, match="pool 'p' is incomplete: its last ingest stopped before the end"):
            store.require_pool("p")  # what scoring, labeling, evaluation and the study ask first
        with pytest.raises(UnknownPool):
            store.require_pool("never-ingested")
    s = ingest(db, [str(path)], "p", format="actprm", emit=False)
    assert (s.status, s.lines_read, s.accepted, s.quarantined, s.duplicates) == ("registered", 31, 30, 1, 0)
    with Store(db, read_only=True) as store:
        assert store.stage_tables("ingest_stage_") == [] and store.pool_size("p") == 30
        assert store.quarantine_count("p") == 1
        store.require_pool("p")


def _killed_after_insert(path, db) -> str:
    """A process that runs the flow's stage, quarantine and insert tasks on `path` into pool "p", then dies."""
    return textwrap.dedent(f"""
        import os, signal
        from actprm.store import Store
        from actprm.formats import FORMATS
        from tasks import ingest as ing
        files = ing.resolve_inputs([{str(path)!r}])
        fmt = FORMATS.get("actprm")
        with Store({str(db)!r}) as store:
            stage = ing.stage(store, files, fmt, ing.IngestLimits())
            summary = ing.IngestSummary(pool="p", format=fmt.name, files=[f.path for f in files])
            ing.quarantine(store, stage, "p", fmt, files, ing.content_hash(files), summary)
            ing.insert(store, stage, "p", fmt, summary)
            os.kill(os.getpid(), signal.SIGKILL)
    """)


def test_a_rerun_after_a_kill_between_insert_and_register_reports_the_lines_the_dead_run_stored(tmp_path, db):
    """kill -9 after the insert committed and before the pool was registered: the 30 good lines are stored but
    no report counted them. The rerun of the same input must report them as accepted and its trajectories as
    added (the event that starts the loop carries that count), not as 30 duplicates and nothing added."""
    path = write_lines(tmp_path / "in.jsonl", [actprm_record(i) for i in range(30)] + ["{oops"])
    proc = subprocess.run([sys.executable, "-c", _killed_after_insert(path, db)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    with Store(db, read_only=True) as store:
        assert store.pool_status("p") == "ingesting" and store.pool_size("p") == 30

    s = ingest(db, [str(path)], "p", format="actprm", emit=False)
    assert (s.status, s.lines_read, s.accepted, s.quarantined, s.duplicates) == ("registered", 31, 30, 1, 0)
    assert s.trajectories_added == 30 and not [w for w in s.warnings if "killed" in w]
    # Registered, the receipt is spent: ingesting the same input again finds only duplicates.
    again = ingest(db, [str(path)], "p", format="actprm", emit=False)
    assert (again.accepted, again.duplicates, again.trajectories_added) == (0, 30, 0)


def test_an_unfinished_ingest_of_other_input_is_named_in_the_next_reports_warnings(tmp_path, db):
    killed = write_lines(tmp_path / "killed.jsonl", [actprm_record(i) for i in range(10)])
    proc = subprocess.run([sys.executable, "-c", _killed_after_insert(killed, db)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    other = write_lines(tmp_path / "other.jsonl", [actprm_record(i) for i in range(10, 15)])
    s = ingest(db, [str(other)], "p", format="actprm", emit=False)
    assert (s.accepted, s.duplicates, s.pool_trajectories) == (5, 0, 15)
    assert [w for w in s.warnings if "killed after storing 10 lines" in w]


def test_a_rerun_with_stricter_limits_after_a_kill_never_counts_negative_duplicates(tmp_path, db):
    """The same bytes, rerun after the kill with a step limit that now quarantines 10 of the 30 lines the dead run
    stored: the receipt may not claim more accepted lines than this run finds good."""
    path = write_lines(tmp_path / "in.jsonl", [actprm_record(i, n_steps=3 if i < 20 else 5) for i in range(30)])
    proc = subprocess.run([sys.executable, "-c", _killed_after_insert(path, db)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    # The pool holds the dead run's 5-step trajectories, past the new limit: the contract rejects it, and says so.
    with pytest.raises(ActPRMError, match="num_steps") as rejected:
        ingest(db, [str(path)], "p", format="actprm", emit=False, max_steps=4)
    s = rejected.value.summary
    assert (s.lines_read, s.accepted, s.quarantined, s.duplicates) == (30, 20, 10, 0)


def test_a_killed_ingest_that_stored_nothing_is_not_reported_as_a_loss(tmp_path, db):
    path = write_lines(tmp_path / "in.jsonl", [actprm_record(i) for i in range(10)])
    ingest(db, [str(path)], "p", format="actprm", emit=False)
    proc = subprocess.run([sys.executable, "-c", _killed_after_insert(path, db)], capture_output=True, text=True,
                          timeout=300)  # a re-ingest of the registered file: all duplicates, killed
    assert proc.returncode == -9, proc.stderr[-2000:]
    other = write_lines(tmp_path / "other.jsonl", [actprm_record(i) for i in range(10, 12)])
    s = ingest(db, [str(other)], "p", format="actprm", emit=False)
    assert s.accepted == 2 and not [w for w in s.warnings if "killed" in w]



def test_a_sanitized_copy_lives_under_the_home_and_a_kill_9_leaves_it_only_until_the_next_ingest(tmp_path, db):
    """A file with an unreadable line is staged from a cleaned copy (as large as the input): it must be written
    under ACTPRM_HOME, not the system temp dir, and a rerun after kill -9 mid-staging removes it (#41.7)."""
    good = [json.dumps(actprm_record(i)).encode() for i in range(20)]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(good[:10] + [b'{"question": "\xff"}'] + good[10:]) + b"\n")
    killed = textwrap.dedent(f"""
        import os, signal, sys
        from actprm.store import Store
        from tasks import ingest as ing
        real = Store.stage_file
        def stage_file(self, stage, fmt, i, file, *args, **kwargs):
            if file.endswith("clean.jsonl"):  # staging from the sanitized copy: die here
                print(file, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, stage, fmt, i, file, *args, **kwargs)
        Store.stage_file = stage_file
        ing.ingest({str(db)!r}, [{str(path)!r}], "p", format="actprm", emit=False)
    """)
    proc = subprocess.run([sys.executable, "-c", killed], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    copy = proc.stdout.strip()
    home_tmp = db.parent / "tmp"
    assert copy.startswith(str(home_tmp)) and os.path.getsize(copy) > 0
    s = ingest(db, [str(path)], "p", format="actprm", emit=False)
    assert (s.status, s.lines_read, s.accepted, s.quarantined) == ("registered", 21, 20, 1)
    assert not os.path.exists(copy) and list(home_tmp.iterdir()) == []
