"""Staging reads a file on every thread (#42) and still gives every line its own number: a file large enough for
DuckDB to split among its threads is staged with the same line numbers, reasons and raw text a one-thread read
gives, on the JSON-reader path and on the line-by-line path, for a one-view and a two-view format."""

from __future__ import annotations

import json

import pytest

from actprm.formats import FORMATS
from actprm.store import Store
from actprm.store.parsing import staging_select
from actprm.store.schema import TRAJECTORY_ID_SQL
from tasks import ingest as ing

# DuckDB hands its threads the file in buffers of 32-64 MiB: ~90 MiB takes more than one.
PAD = "x" * 1000
LINES = 90_000
BAD = {20_001: "not json at all", 45_000: "", 70_123: '{"question": 5, "steps": ["a"]}'}


def record(fmt: str, line_no: int) -> dict:
    """A line that names its own line number (its id), so a row staged under another number shows."""
    if fmt == "actprm":
        return {"id": f"line{line_no}", "question": f"q{line_no} {PAD}", "steps": [f"s{line_no}", "t"],
                "hard_labels": [1, 1]}
    # PRMBench: every third line also gives its original process (a second view)
    return {"idx": f"line{line_no}", "classification": "redundency" if line_no % 3 == 0 else "circular",
            "original_question": f"q{line_no} {PAD}", "modified_question": f"q{line_no} {PAD}",
            "original_process": [f"s{line_no}", "t"], "modified_process": [f"s{line_no}", "u"], "error_steps": [2]}


def write(path, fmt: str, bad: dict[int, str]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for n in range(1, LINES + 1):
            fh.write((bad[n] if n in bad else json.dumps(record(fmt, n))) + "\n")


COLUMNS = "line_no, view_no, reason, raw, id, source_id, question"


@pytest.mark.parametrize("fmt_name,bad", [("actprm", {}), ("prmbench", BAD)], ids=["json-reader", "line-by-line"])
def test_a_file_read_by_several_threads_keeps_its_line_numbers(tmp_path, db, fmt_name, bad):
    path = tmp_path / "big.jsonl"
    write(path, fmt_name, bad)
    files, fmt, limits = ing.resolve_inputs([str(path)]), FORMATS.get(fmt_name), ing.IngestLimits()
    with Store(db) as store:
        store.sql("SET threads = 4")  # more threads than a small CI machine's cores: more chances to reorder
        name = ing.stage(store, files, fmt, limits, temporary=True)
        got = store.sql(f"SELECT {COLUMNS} FROM {name} ORDER BY line_no, view_no").fetchall()
        # the reference: lines numbered by the reader itself (WITH ORDINALITY), which reads on one thread
        store.create_ingest_stage("reference", temporary=True)
        store.sql("INSERT INTO reference " + staging_select(fmt, "jsonl", limits.as_dict(), TRAJECTORY_ID_SQL,
                                                            fast=not bad), [str(path), 0, str(path)])
        want = store.sql(f"SELECT {COLUMNS} FROM reference ORDER BY line_no, view_no").fetchall()
    assert got == want
    assert {r[0] for r in got} == set(range(1, LINES + 1))
    assert all(r[5].split(":")[0] == f"line{r[0]}" for r in got if r[2] is None)
    assert {r[0]: r[3] for r in got if r[2] is not None} == bad


@pytest.mark.parametrize("fast", [True, False], ids=["json-reader", "line-by-line"])
@pytest.mark.parametrize("fmt_name", sorted(FORMATS.names()))
def test_every_format_is_staged_on_every_thread(tmp_path, db, fmt_name, fast):
    """The staging SELECT of each format plans as DuckDB's order-keeping parallel insert: an operator that may
    reorder rows (a hash join, which is how DuckDB plans `x IN (<constants>)`) would send the format back to
    reading on one thread, at twice the staging time."""
    fmt, path = FORMATS.get(fmt_name), str(tmp_path / "x.jsonl")
    (tmp_path / "x.jsonl").write_text("{}\n")
    with Store(db) as store:
        store.create_ingest_stage("s", temporary=True)
        sql = "INSERT INTO s " + staging_select(fmt, "jsonl", ing.IngestLimits().as_dict(), TRAJECTORY_ID_SQL,
                                                fast=fast, numbered=False)
        store.sql("SET preserve_insertion_order = true")
        plan = json.loads(store.sql("EXPLAIN (FORMAT JSON) " + sql, [path, 0, path]).fetchall()[0][1])
    assert plan[0]["name"] == "BATCH_INSERT"
