"""Inputs that are not what they seem get an error that names the real problem (#41.9)."""

from __future__ import annotations

import json
import os

import pytest

from actprm.errors import ActPRMError
from tasks.ingest import (
    DiskFull,
    InputFile,
    _sanitize,
    ingest,
    resolve_format,
    resolve_inputs,
)
from tests.data.conftest import actprm_record, write_lines


def test_a_deeply_nested_line_does_not_stop_format_detection(tmp_path, db):
    deep = '{"question": "q", "steps": ["a"], "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = write_lines(tmp_path / "deep.jsonl", [deep, actprm_record(1)])
    assert resolve_format(resolve_inputs([str(path)]), None).name == "actprm"
    s = ingest(db, [str(path)], "p", emit=False)
    assert (s.lines_read, s.accepted, s.quarantined) == (2, 1, 1)


def test_a_fifo_is_named_as_such(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ActPRMError, match="pipe.jsonl: a FIFO, not a regular file"):
        resolve_inputs([str(fifo)])


def test_a_symlink_loop_is_named_as_such(tmp_path):
    os.symlink(tmp_path / "b.jsonl", tmp_path / "a.jsonl")
    os.symlink(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    with pytest.raises(ActPRMError, match="a.jsonl: a symbolic link loop"):
        resolve_inputs([str(tmp_path / "a.jsonl")])
    with pytest.raises(ActPRMError, match="input file not found: .*missing.jsonl$"):
        resolve_inputs([str(tmp_path / "missing.jsonl")])


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a disk that is always full)")
def test_a_full_disk_is_not_reported_as_an_unreadable_input(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(json.dumps(actprm_record(i)).encode() for i in range(2000)) + b"\xff\n")
    with pytest.raises(DiskFull, match="disk full while writing the sanitized copy /dev/full") as err:
        _sanitize(InputFile(str(path), "jsonl"), "/dev/full", 100)
    assert "cannot read" not in str(err.value)


def test_a_store_disk_filling_while_staging_is_reported_as_disk_full(tmp_path, db, monkeypatch):
    """DuckDB raises IOException both for an unreadable input and for a full disk under the store (simulated here:
    a real full disk under a test's tmp_path is not available): only the first may say `cannot read <input>`."""
    import duckdb

    from actprm.store import Store

    def full(*args, **kwargs):
        raise duckdb.IOException('IO Error: Could not write file "actprm.duckdb.tmp/x": No space left on device')

    monkeypatch.setattr(Store, "stage_file", full)
    path = write_lines(tmp_path / "in.jsonl", [actprm_record(0)])
    with pytest.raises(DiskFull, match=r"disk full while ingesting .*in.jsonl"):
        ingest(db, [str(path)], "p", emit=False)
