"""Lines of any size are accounted for: counted by the stream, not by DuckDB's reader buffer (issue 41.2).

DuckDB's line reader silently dropped a >= 70 MB last line and aborted on one elsewhere; a 100 MB line must be
quarantined with its line number wherever it is, in plain and gzip files, and the lines around it stored."""

from __future__ import annotations

import gzip
import json

import pytest

from actprm.store import Store
from tasks.ingest import _MAX_TEXT_LINE, InputFile, ingest, scan_lines
from tests.data.conftest import actprm_record

BIG = 100 << 20


def _write(path, where: str, compressed: bool) -> None:
    good = [json.dumps(actprm_record(i)).encode() for i in range(3)]
    big = b'{"question": "' + b"x" * BIG + b'", "steps": ["a"], "hard_labels": [1]}'
    lines = good[:1] + [big] + good[1:] if where == "middle" else good + [big]
    data = b"\n".join(lines) + (b"\n" if where == "middle" else b"")  # a last line without a newline too
    if compressed:
        data = gzip.compress(data, compresslevel=1)
    path.write_bytes(data)


@pytest.mark.slow
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("where", ["middle", "end"])
def test_a_100_mb_line_is_quarantined_with_its_number(tmp_path, db, where, compressed):
    path = tmp_path / ("in.jsonl.gz" if compressed else "in.jsonl")
    _write(path, where, compressed)
    s = ingest(db, [str(path)], "p", format="actprm", emit=False)
    big_line = 2 if where == "middle" else 4
    assert (s.lines_read, s.accepted, s.quarantined, s.duplicates) == (4, 3, 1, 0)
    with Store(db, read_only=True) as store:
        (row,) = store.quarantine_sample("p", 10)
        assert store.pool_size("p") == 3
    assert (row["line_no"], row["reason"]) == (big_line, f"line longer than {_MAX_TEXT_LINE} bytes")
    assert row["raw"].startswith('!unreadable {"question": "xxx') and len(row["raw"]) <= 2_000
    assert not list((db.parent / "tmp").glob("ingest-*"))  # the sanitized copy is gone


def test_the_stream_scan_counts_every_line_and_finds_long_ones(tmp_path):
    cases = {b"": (0, ()), b"\n": (1, ()), b"a": (1, ()), b"a\n": (1, ()), b"a\n\nb": (3, ()),
             b"a\r\n" + b"y" * _MAX_TEXT_LINE + b"\r\nb\n": (3, ()),
             b"a\n" + b"y" * (_MAX_TEXT_LINE + 2) + b"\nb\n": (3, (2,)),
             b"y" * (_MAX_TEXT_LINE + 2): (1, (1,))}
    for data, want in cases.items():
        path = tmp_path / "s.jsonl"
        path.write_bytes(data)
        got = scan_lines(InputFile(str(path), "jsonl"), chunk=1 << 16)
        assert (got.lines, got.long_lines) == want, data[:20]
