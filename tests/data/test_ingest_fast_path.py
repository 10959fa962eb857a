"""The JSON-reader fast path (#42) stages exactly what the line-by-line path stages, and any file it cannot
account for line by line goes back to that path: a well-formed file never loses or changes a row, a bad line
never loses its number, reason or raw text."""

from __future__ import annotations

import gzip
import json
import logging

import pytest

from actprm.formats import FORMATS
from actprm.store import Store
from tasks import ingest as ing
from tests.data.conftest import actprm_record, write_lines
from tests.data.test_quarantine import BAD_LINES

STAGE_COLUMNS = ("line_no, view_no, reason, raw, id, question, steps, num_steps, first_error, step_labels, "
                 "error_kind, source_id")

MS_Q = "Janet has 3 apples and buys 2 more. How many apples?"
GOOD = {
    "actprm": [actprm_record(i, first_error=i % 3 - 1) for i in range(6)]
              + [{"question": 'Ein "Zug" — 中文? \\', "steps": ["é 🙂", 'say "hi"\ttab\nnl', "\u2028 separator"], "hard_labels": [1, 1, 1]}],
    "processbench": [{"id": "gsm8k-0", "problem": "1+1?", "steps": ["1+1=3", "so 3"], "label": 0},
                     {"id": "gsm8k-1", "problem": "2+2?", "steps": ["2+2=4", "so 4"], "label": -1}],
    "math_shepherd": [{"input": f"{MS_Q} Step 1: 3 apples. ки\nStep 2: 3 + 2 = 6. ки", "task": "GSM8K",
                       "label": f"{MS_Q} Step 1: 3 apples. +\nStep 2: 3 + 2 = 6. -"}],
    "prmbench": [{"idx": "p0", "classification": "circular", "original_question": "2 min in s?",
                  "modified_question": "2 min in s?", "original_process": ["60 s a minute.", "2 * 60 = 120."],
                  "modified_process": ["60 s a minute.", "Assume 120."], "error_steps": [2]}],
    "trl_stepwise": [{"prompt": "3*3?", "completions": ["3*3=9", "so 9"], "labels": [True, True]}],
    "unlabeled": [{"question": "q1", "steps": ["a", "b"]}],
}


def staged(store: Store, files, fmt, *, fast: bool) -> list[tuple]:
    """The stage rows of `files` read one way, in line order."""
    name = f"{ing.STAGE_PREFIX}test_{'fast' if fast else 'raw'}"
    store.create_ingest_stage(name, temporary=True)
    for i, f in enumerate(files):
        store.stage_file(name, fmt, i, f.path, f.kind, ing.IngestLimits().as_dict(), fast=fast)
    rows = store.sql(f"SELECT {STAGE_COLUMNS} FROM {name} ORDER BY line_no, view_no").fetchall()
    store.drop_stage(name)
    return rows


@pytest.mark.parametrize("fmt_name", sorted(GOOD))
def test_the_json_reader_stages_the_same_rows_as_the_line_reader(tmp_path, db, fmt_name):
    path = write_lines(tmp_path / "in.jsonl", GOOD[fmt_name] * 2)  # repeats: duplicates are staged, not dropped
    files, fmt = ing.resolve_inputs([str(path)]), FORMATS.get(fmt_name)
    with Store(db) as store:
        fast = staged(store, files, fmt, fast=True)
        assert fast == staged(store, files, fmt, fast=False)
        assert {r[0] for r in fast} == set(range(1, 2 * len(GOOD[fmt_name]) + 1)) and all(r[2] is None for r in fast)


def test_a_well_formed_file_keeps_the_fast_stage(tmp_path, db, caplog):
    path = tmp_path / "in.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(actprm_record(i)) + "\n" for i in range(50)))
    with caplog.at_level(logging.INFO, logger="tasks.ingest"):
        s = ing.ingest(db, [str(path)], "p", format="actprm", emit=False)
    assert (s.lines_read, s.accepted, s.quarantined) == (50, 50, 0)
    assert not [r for r in caplog.records if "line by line" in r.getMessage()]


# Lines DuckDB's JSON reader skips or reads without an error, but which are not a usable record
READER_QUIET = [("null", "not a JSON object"), ("{}", "question is missing or null"), ("", "blank line"),
                ("  ", "blank line")]


@pytest.mark.parametrize("line,reason", [(line, reason) for line, reason in BAD_LINES + READER_QUIET],
                         ids=range(len(BAD_LINES) + len(READER_QUIET)))
def test_one_bad_line_keeps_its_number_reason_and_raw_text(tmp_path, db, line, reason):
    """Each kind of bad line alone, amid good ones (the mixed file of test_quarantine falls back at its first)."""
    lines = [actprm_record(i) for i in range(5)] + [line] + [actprm_record(i) for i in range(5, 9)]
    files = ing.resolve_inputs([str(write_lines(tmp_path / "in.jsonl", lines))])
    raw = line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)
    with Store(db) as store:
        name = ing.stage(store, files, FORMATS.get("actprm"), ing.IngestLimits(), temporary=True)
        rows = store.sql(f"SELECT line_no, reason, raw FROM {name} ORDER BY line_no").fetchall()
    assert [r[0] for r in rows] == list(range(1, 11))
    assert [(r[1], r[2]) for r in rows if r[1] is not None] == [(reason, raw)]


def is_json_object(line) -> bool:
    try:
        return isinstance(line, dict) or isinstance(json.loads(line), dict)
    except ValueError:
        return False


@pytest.mark.parametrize("temporary", [True, False], ids=["one-store", "flow-tasks"])
def test_only_the_bad_lines_of_a_file_of_json_objects_are_read_again(tmp_path, db, caplog, temporary):
    """Lines that are JSON objects but unusable (a field missing, of the wrong type, over a limit...) leave the fast
    stage of the file in place: only they are read again line by line, and each is staged exactly as a read of the
    whole file line by line stages it."""
    # (a key given twice makes the reader raise: that file goes line by line, see above)
    bad = [line for line, why in BAD_LINES + READER_QUIET
           if line != "null" and is_json_object(line) and not why.startswith("duplicate key")]
    lines = [actprm_record(i) for i in range(3)]
    for k, line in enumerate(bad):
        lines += [line, actprm_record(100 + k)]
    files = ing.resolve_inputs([str(write_lines(tmp_path / "in.jsonl", lines + ["null"]))])
    fmt = FORMATS.get("actprm")
    with Store(db) as store, caplog.at_level(logging.INFO, logger="tasks.ingest"):
        name = ing.stage(store, files, fmt, ing.IngestLimits(), temporary=temporary)
        got = store.sql(f"SELECT {STAGE_COLUMNS} FROM {name} ORDER BY line_no, view_no").fetchall()
        assert got == staged(store, files, fmt, fast=False)
    if not temporary:  # the flow's tasks each open the store: the stage stays a table in the file for the next
        with Store(db) as store:
            assert store.stage_tables(ing.STAGE_PREFIX) == [name]
            assert store.sql(f"SELECT {STAGE_COLUMNS} FROM {name} ORDER BY line_no, view_no").fetchall() == got
    messages = [r.getMessage() for r in caplog.records]
    assert f"staging {len(bad) + 1} line(s) of {files[0].path} line by line: they have a reason to be quarantined" \
        in messages
    assert sum(r[2] is not None for r in got) == len(bad) + 1  # every bad line, with the null line's own reason
    assert got[-1][2:4] == ("not a JSON object", "null")


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_copy_lines_finds_lines_across_reads(tmp_path, chunk, newline):
    text = newline.join(f"line {n} " + "x" * (n % 13) for n in range(1, 41))  # the last line has no newline
    path = tmp_path / "in.jsonl"
    path.write_bytes(text.encode())
    wanted = [1, 2, 9, 10, 23, 39, 40]
    out = tmp_path / "out.jsonl"
    assert ing.copy_lines(ing.InputFile(str(path), "jsonl"), wanted, str(out), chunk=chunk) == len(wanted)
    # each line as the file holds it (a CRLF line keeps its CR), one per line of the copy
    assert out.read_bytes().decode().split("\n")[:-1] == [text.split("\n")[n - 1] for n in wanted]
