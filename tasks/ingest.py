"""Ingest: stream trajectory files into the DuckDB store, quarantining every bad line with a reason.

Every line read is accounted for: accepted + quarantined + duplicates = lines_read. DuckDB reads each
line as raw text with its line number and does all parsing and checking in SQL (`actprm.store.parsing`,
run by the `ingest` section of `Store`), so a 1M-line file never becomes Python objects.

Counts are per input line. A line holding several trajectories (PRMBench: original + modified) is
accepted when at least one of them is new to the pool; `trajectories_added` counts trajectories.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import glob as globlib
import gzip
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb

from actprm.errors import ActPRMError
from actprm.formats import FORMATS, InputFormat, detect_format
from actprm.names import check_pool_name
from actprm.processes import pid_alive
from actprm.store import Store
from actprm.store.parsing import RAW_LINE_DELIMITER
from tasks.data_docs import DataDocsLinks, artifact_links, zip_site

log = logging.getLogger(__name__)

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".jsonl.gz": "jsonl.gz", ".json.gz": "jsonl.gz",
            ".ndjson.gz": "jsonl.gz", ".jsonl.zst": "jsonl.zst", ".json.zst": "jsonl.zst", ".ndjson.zst": "jsonl.zst",
            ".parquet": "parquet"}
DETECT_MAX_LINES = 1000        # lines peeked per file to find the first valid record
HASH_FULL_BYTES = 64 << 20     # inputs larger than this are fingerprinted (size, mtime, head, tail)


@dataclass(frozen=True)
class IngestLimits:
    """Per-record limits; a record over any of them is quarantined (see IngestSettings)."""

    max_question_chars: int = 20_000
    max_steps: int = 200
    max_step_chars: int = 8_000
    quarantine_raw_chars: int = 2_000

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_settings(cls, settings) -> IngestLimits:
        """From `Settings.ingest` (the one place that maps it)."""
        return cls(**{k: getattr(settings.ingest, k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class InputFile:
    path: str
    kind: str  # jsonl | jsonl.gz | jsonl.zst | parquet


@dataclass
class IngestSummary:
    pool: str
    lines_read: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    status: str = "ingesting"
    report: str | None = None
    format: str = ""
    files: list[str] = field(default_factory=list)
    content_hash: str = ""
    trajectories_added: int = 0
    pool_trajectories: int = 0
    labeled_fraction: float = 0.0
    validated_rows: int = 0  # trajectories the data contract checked: the whole pool
    top_reasons: list[tuple[str, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)   # critical data-contract failures
    warnings: list[str] = field(default_factory=list)   # non-blocking contract findings (drift, sanity)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["top_reasons"] = [list(r) for r in self.top_reasons]
        return d


# ---------------------------------------------------------------------------- inputs
def input_kind(path: str) -> str:
    name = path.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return SUFFIXES[suffix]
    raise ActPRMError(f"unsupported input file {path!r}: use .jsonl, .jsonl.gz, .jsonl.zst or .parquet")


def resolve_inputs(paths: list[str] | str) -> list[InputFile]:
    """Files named, matched by globs, or found under directories; each group sorted, no repeats."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [str(paths)]
    if not paths:
        raise ActPRMError("no input paths given")
    out: list[str] = []
    for p in map(str, paths):
        if any(ch in p for ch in "*?["):
            matched = sorted(m for m in globlib.glob(p, recursive=True) if Path(m).is_file())
            if not matched:
                raise ActPRMError(f"no input files match {p!r}")
            out += matched
        elif Path(p).is_dir():
            matched = sorted(str(m) for m in Path(p).rglob("*") if m.is_file() and _supported(m.name))
            if not matched:
                raise ActPRMError(f"no .jsonl/.jsonl.gz/.jsonl.zst/.parquet files under directory {p!r}")
            out += matched
        elif Path(p).is_file():
            out.append(p)
        else:
            raise ActPRMError(_not_a_file(p))
    seen: set[str] = set()
    files = []
    for p in out:
        # One spelling per file (absolute, links resolved): the quarantine is keyed by it, so re-ingesting a
        # file named another way replaces its quarantined lines instead of counting them twice.
        key = str(Path(p).resolve())
        if key not in seen:
            seen.add(key)
            files.append(InputFile(key, input_kind(p)))
    return files


def _not_a_file(p: str) -> str:
    """Why `p` (neither a file nor a directory) cannot be read, in the words that fit."""
    import errno
    import stat

    try:
        mode = os.stat(p).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"cannot read {p}: a symbolic link loop"
        if exc.errno == errno.ENOENT:
            return f"input file not found: {p}" + (" (a dangling symbolic link)" if os.path.islink(p) else "")
        return f"cannot read {p}: {exc.strerror}"
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return f"cannot read {p}: {kind}, not a regular file (ingest reads files twice: copy it to a file first)"


def _supported(name: str) -> bool:
    try:
        input_kind(name)
        return True
    except ActPRMError:
        return False


@contextlib.contextmanager
def _open_text(f: InputFile):
    """Streaming binary reader of a JSONL input (for peeking and for the sanitizing fallback)."""
    raw = open(f.path, "rb")
    try:
        if f.kind == "jsonl.gz":
            yield gzip.GzipFile(fileobj=raw)
        elif f.kind == "jsonl.zst":
            import zstandard

            yield zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        else:
            yield raw
    finally:
        raw.close()


def first_record_keys(f: InputFile) -> list[str] | None:
    """Keys of the first line that is a JSON object (columns for Parquet); None when there is none."""
    try:
        if f.kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(f.path).names)
        import io

        with _open_text(f) as stream:
            for i, line in enumerate(io.BufferedReader(stream) if f.kind != "jsonl" else stream):
                if i >= DETECT_MAX_LINES:
                    break
                try:
                    rec = json.loads(line)
                except (ValueError, RecursionError):  # too deeply nested for Python: that line, not the file
                    continue
                if isinstance(rec, dict):
                    return list(rec)
    except (OSError, EOFError, ValueError) as exc:
        raise ActPRMError(f"cannot read {f.path}: {_one_line(exc)}") from None
    except Exception as exc:  # zstandard / pyarrow raise their own error types
        raise ActPRMError(f"cannot read {f.path}: {_one_line(exc)}") from None
    return None


def resolve_format(files: list[InputFile], format: str | None) -> InputFormat:
    if format:
        return FORMATS.get(format)
    for f in files:
        keys = first_record_keys(f)
        if keys is not None:
            return detect_format(keys)
    raise ActPRMError(f"cannot detect the input format: no JSON object in the first {DETECT_MAX_LINES} lines of "
                      f"{files[0].path}; pass format= one of: {', '.join(FORMATS.names())}")


def content_hash(files: list[InputFile]) -> str:
    """sha256 of the input bytes; large files are fingerprinted by size, mtime and their first/last MiB."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f.path)
        h.update(f"{Path(f.path).name}\0{st.st_size}\0".encode())
        with open(f.path, "rb") as fh:
            if st.st_size <= HASH_FULL_BYTES:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            else:
                h.update(f"{st.st_mtime_ns}".encode())
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:32]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------- stages
def stage(store: Store, files: list[InputFile], fmt: InputFormat, limits: IngestLimits, *,
          temporary: bool = False, tmp_dir: str | Path | None = None) -> str:
    """Reads, parses and checks every line of every file into a fresh stage table; returns its name.
    `temporary`: the same open store will quarantine and insert (the stage then never touches disk).
    `tmp_dir`: where sanitized copies go (default: `tmp/` beside the DuckDB file, i.e. under ACTPRM_HOME)."""
    tmp_dir = Path(tmp_dir) if tmp_dir is not None else store.path.parent / "tmp"
    drop_orphan_stages(store)
    clean_orphan_temp_dirs(tmp_dir)
    name = f"{STAGE_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:12]}"
    store.create_ingest_stage(name, temporary=temporary)
    try:
        for i, f in enumerate(files):
            _stage_one(store, name, fmt, i, f, limits, tmp_dir)
    except BaseException:
        store.drop_stage(name)
        raise
    return name


STAGE_PREFIX = "ingest_stage_"


def drop_orphan_stages(store: Store) -> list[str]:
    """Drops the stage tables of ingests whose process is gone (killed between the flow's tasks, which hand the
    stage over in the DuckDB file); returns their names. A live process's stage is left alone."""
    dropped = []
    for name in store.stage_tables(STAGE_PREFIX):
        pid, _, tag = name[len(STAGE_PREFIX):].partition("_")
        if pid.isdigit() and tag and not pid_alive(int(pid)):
            store.drop_stage(name)
            dropped.append(name)
    if dropped:
        log.info("dropped %d stage table(s) left by killed ingests: %s", len(dropped), ", ".join(dropped))
    return dropped


def _stage_one(store: Store, stage_name: str, fmt: InputFormat, i: int, f: InputFile, limits: IngestLimits,
               tmp_dir: Path) -> None:
    if f.kind == "jsonl.zst" and not _zstd_complete(f.path):
        # DuckDB (and zstandard's stream reader) read a cut zstd stream as a shorter file, without an error: the
        # lines after the cut would be neither stored nor quarantined. (A cut gzip stream is an IOException.)
        raise ActPRMError(f"cannot read {f.path}: the zstd stream ends mid-frame (a truncated or partly copied "
                          "file); nothing from it was ingested")
    scan = None
    if f.kind != "parquet":
        # The stream's own line count is taken in a thread while DuckDB (which releases the GIL) stages the file.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ingest-scan") as counter:
            counting = counter.submit(scan_lines, f)
            staged_fast = _stage_fast(store, stage_name, fmt, i, f, limits, counting, tmp_dir)
            scan = counting.result()
        if staged_fast:
            return
    if scan is not None and scan.long_lines:
        # DuckDB's reader drops an over-long last line without a word and aborts on one elsewhere: such a file
        # goes straight to the sanitized copy, where the line is quarantined with its number.
        log.warning("falling back to a sanitized copy of %s: %d line(s) longer than %d bytes (first: line %d)",
                    f.path, len(scan.long_lines), _MAX_TEXT_LINE, scan.long_lines[0])
    else:
        try:
            store.stage_file(stage_name, fmt, i, f.path, f.kind, limits.as_dict())
            staged = store.stage_file_lines(stage_name, i)
            if scan is None or staged == scan.lines:
                return
            # The reader saw another number of lines than the stream holds: never trust it, re-read line by line.
            log.warning("falling back to a sanitized copy of %s: the reader staged %d lines, the file has %d",
                        f.path, staged, scan.lines)
            store.drop_stage_file(stage_name, i)
        except (duckdb.InvalidInputException, duckdb.NotImplementedException) as exc:
            # Lines DuckDB's reader cannot take as text (invalid UTF-8, over the max line size, holding the
            # delimiter): stage a sanitized copy, so those lines are quarantined with their own reason.
            if f.kind == "parquet":
                raise ActPRMError(f"cannot read {f.path}: {_one_line(exc)}") from None
            store.drop_stage_file(stage_name, i)
            log.warning("falling back to a sanitized copy of %s: %s", f.path, _one_line(exc))
        except duckdb.IOException as exc:  # missing, not the declared compression, truncated, not Parquet, disk full
            raise _io_error(f, exc) from None
    with _work_dir(tmp_dir) as tmp:
        clean = os.path.join(tmp, "clean.jsonl")
        unreadable, lines = _sanitize(f, clean, limits.quarantine_raw_chars)
        try:
            store.stage_file(stage_name, fmt, i, clean, "jsonl", limits.as_dict(), unreadable=unreadable, source=f.path)
        except duckdb.Error as exc:
            raise _io_error(f, exc) from None
    staged = store.stage_file_lines(stage_name, i)
    if staged != lines or (scan is not None and scan.lines != lines):  # pragma: no cover - a bug, not an input
        raise ActPRMError(f"cannot account for every line of {f.path}: the file has "
                          f"{scan.lines if scan else lines} lines, the stage {staged}; nothing was ingested")


@contextlib.contextmanager
def _work_dir(tmp_dir: Path):
    """A folder for an ingest's sanitized copies, removed when the block ends. Under ACTPRM_HOME and named by this
    process: a kill -9 leaves it for the next ingest's clean_orphan_temp_dirs."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=tmp_dir) as tmp:
        yield tmp


def _stage_fast(store: Store, stage_name: str, fmt: InputFormat, i: int, f: InputFile, limits: IngestLimits,
                counting: concurrent.futures.Future, tmp_dir: Path) -> bool:
    """Stages a JSONL file with DuckDB's JSON reader (`parsing.fields_sql`): no line is kept as text nor parsed
    twice. Kept when it staged exactly the stream's lines (`counting`: the scan_lines of the file); its bad rows
    (JSON objects a check refuses) are then staged again line by line, for their number, reason and raw text.
    Otherwise (a malformed, blank, non-object, duplicate-key or over-long line; any reader error) the file is
    forgotten, to be staged again line by line. True when the file is staged."""
    try:
        store.stage_file(stage_name, fmt, i, f.path, f.kind, limits.as_dict(), fast=True)
        scan = counting.result()
        if scan.long_lines:
            why = f"line(s) longer than {_MAX_TEXT_LINE} bytes"
        elif (staged := store.stage_file_lines(stage_name, i)) == scan.lines:
            if bad := store.stage_file_bad_lines(stage_name, i):
                # Every line was a JSON object and got its row: only the bad ones are read again, line by line,
                # for their reason and raw text (the reader keeps no text, and reads `null` as an empty object).
                log.info("staging %d line(s) of %s line by line: they have a reason to be quarantined", len(bad),
                         f.path)
                _restage_lines(store, stage_name, fmt, i, f, bad, limits, tmp_dir)
            return True
        else:
            why = f"the reader staged {staged} of {scan.lines} lines (a blank line)"
    except duckdb.Error as exc:  # the raw path meets the same input and says what is wrong, line by line
        why = _one_line(exc)
    store.drop_stage_file(stage_name, i)
    log.info("staging %s line by line: %s", f.path, why)
    return False


def _restage_lines(store: Store, stage_name: str, fmt: InputFormat, i: int, f: InputFile, line_numbers: list[int],
                   limits: IngestLimits, tmp_dir: Path) -> None:
    """Stages lines `line_numbers` of `f` again the line-by-line way (a sanitized copy of just them), in place of
    what the fast stage holds for them."""
    with _work_dir(tmp_dir) as tmp:
        picked, clean = os.path.join(tmp, "lines.jsonl"), os.path.join(tmp, "clean.jsonl")
        copied = copy_lines(f, line_numbers, picked)
        unreadable, lines = _sanitize(InputFile(picked, "jsonl"), clean, limits.quarantine_raw_chars)
        if copied != len(line_numbers) or lines != copied:  # pragma: no cover - a bug, not an input
            raise ActPRMError(f"cannot account for every line of {f.path}: {len(line_numbers)} lines to read again, "
                              f"{copied} found; nothing was ingested")
        try:
            store.restage_lines(stage_name, fmt, i, clean, line_numbers, limits.as_dict(), unreadable, source=f.path)
        except duckdb.Error as exc:
            raise _io_error(f, exc) from None


def copy_lines(f: InputFile, line_numbers: list[int], out_path: str, chunk: int = 1 << 20) -> int:
    """Copies lines `line_numbers` (1-based, ascending) of `f` to `out_path`, each with a newline; returns how many
    it found. One streaming pass of 1 MiB reads that counts newlines in C and looks for them one by one only in
    a read that holds a wanted line: no read is split into lines, nor joined to the next."""
    wanted, found = iter(line_numbers), 0
    want = next(wanted, None)
    line_no, pending = 1, []  # the line the next byte belongs to; the pieces read so far of it, when it is wanted
    with open(out_path, "wb") as out:
        try:
            with _open_text(f) as stream:
                while want is not None and (data := stream.read(chunk)):
                    pos = 0
                    while want is not None:
                        if line_no < want:  # skip to the start of the wanted line, or past this read
                            skip, left = want - line_no, data.count(b"\n", pos)
                            if left < skip:
                                line_no += left
                                break
                            for _ in range(skip):
                                pos = data.index(b"\n", pos) + 1
                            line_no = want
                        end = data.find(b"\n", pos)
                        if end < 0:  # the wanted line goes on in the next read
                            pending.append(data[pos:])
                            break
                        out.write(b"".join(pending) + data[pos:end] + b"\n")
                        pending, found, want, line_no, pos = [], found + 1, next(wanted, None), line_no + 1, end + 1
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # the copy's disk
                raise _write_error(out_path, exc) from None
            raise ActPRMError(f"cannot read {f.path}: {_one_line(exc)}") from None
        except (EOFError, ValueError) as exc:
            raise ActPRMError(f"cannot read {f.path}: {_one_line(exc)}") from None
        if want == line_no and any(pending):  # a last line without a newline
            out.write(b"".join(pending) + b"\n")
            found += 1
    return found


def _io_error(f: InputFile, exc: BaseException) -> ActPRMError:
    """A disk that filled while staging is not an unreadable input: say which it is."""
    text = _one_line(exc)
    if "No space left" in str(exc) or "ENOSPC" in str(exc):
        return DiskFull(f"disk full while ingesting {f.path}: {text}; free space under ACTPRM_HOME and rerun")
    return ActPRMError(f"cannot read {f.path}: {text}")


class DiskFull(ActPRMError):
    """The store's disk (or the sanitized copy's) filled during an ingest."""


@dataclass(frozen=True)
class LineScan:
    """What the input stream holds, counted without DuckDB's reader (whose buffer can lose a long line)."""

    lines: int
    long_lines: tuple[int, ...]  # numbers of the lines over _MAX_TEXT_LINE bytes


def scan_lines(f: InputFile, chunk: int = 1 << 20) -> LineScan:
    """Counts the lines of a JSONL input (a last line without a newline counts) and finds those longer than
    _MAX_TEXT_LINE bytes, in one streaming pass of 1 MiB reads: only a line spanning reads can be that long,
    so each read costs a count and two searches, never a Python loop over its lines."""
    newlines, run, long_lines = 0, 0, []  # run: bytes since the last newline
    try:
        with _open_text(f) as stream:
            while data := stream.read(chunk):
                first = data.find(b"\n")
                if first < 0:
                    run += len(data)
                    continue
                if run + first > _MAX_TEXT_LINE + 1:  # + 1: the CR of a CRLF line
                    long_lines.append(newlines + 1)
                newlines += data.count(b"\n")
                run = len(data) - data.rfind(b"\n") - 1
    except (OSError, EOFError, ValueError) as exc:
        raise ActPRMError(f"cannot read {f.path}: {_one_line(exc)}") from None
    except Exception as exc:  # zstandard raises its own error types
        raise ActPRMError(f"cannot read {f.path}: {_one_line(exc)}") from None
    if run > _MAX_TEXT_LINE + 1:
        long_lines.append(newlines + 1)
    return LineScan(newlines + (1 if run else 0), tuple(long_lines))


def _zstd_complete(path: str, chunk: int = 1 << 20) -> bool:
    """True when every zstd frame in the file ends (decompressing it once, ~1 GB/s; the output is dropped)."""
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    frame, mid_frame = decompressor.decompressobj(), False
    try:
        with open(path, "rb") as fh:
            while data := fh.read(chunk):
                while data:
                    frame.decompress(data)
                    mid_frame, data = not frame.eof, b""
                    if frame.eof:  # the next frame, if any, starts in what this one left
                        data, frame = frame.unused_data, decompressor.decompressobj()
    except zstandard.ZstdError as exc:
        raise ActPRMError(f"cannot read {path}: not a zstd stream ({_one_line(exc)})") from None
    return not mid_frame


_MAX_TEXT_LINE = 16 << 20  # longer lines are unreadable for the raw reader (its max_line_size is 32 MiB)


def _sanitize(f: InputFile, out_path: str, keep_chars: int) -> tuple[dict[int, str], int]:
    """Streams `f` to a plain JSONL copy where each line that is not valid UTF-8, is too long or holds a
    control-character delimiter is replaced by a marked (never valid JSON) excerpt; returns their reasons and the
    number of lines. A line holding a carriage return is re-serialized when it is JSON, and marked otherwise.
    Lines are read at most _MAX_TEXT_LINE bytes at a time: a line of any size costs that much memory."""
    import io

    reasons: dict[int, str] = {}
    cap = _MAX_TEXT_LINE + 2  # the longest readable line and its CRLF
    n = 0

    def read_line(reader) -> bytes:
        try:
            return reader.readline(cap)
        except (OSError, EOFError, ValueError) as exc:
            raise ActPRMError(f"cannot read {f.path}: {_one_line(exc)}") from None

    try:
        with open(out_path, "wb") as out, _open_text(f) as src:
            reader = io.BufferedReader(src) if f.kind != "jsonl" else src
            while line := read_line(reader):
                n += 1
                body, why = line.rstrip(b"\r\n"), None
                if len(line) == cap and not line.endswith(b"\n"):
                    why = f"line longer than {_MAX_TEXT_LINE} bytes"
                    while line and not line.endswith(b"\n"):  # skip the rest of it, a bounded read at a time
                        line = read_line(reader)
                else:
                    try:
                        body.decode("utf-8")
                    except UnicodeDecodeError:
                        why = "not valid UTF-8"
                if why is None and RAW_LINE_DELIMITER.encode() in body:
                    why = "malformed JSON"
                if why is None and b"\r" in body:
                    # The raw reader takes a lone CR for a line break. Inside a line, JSON allows it only as
                    # whitespace between tokens: such a line is re-serialized (same values, no CR); any other
                    # (a raw CR inside a string) is not JSON.
                    try:
                        body = json.dumps(json.loads(body), ensure_ascii=False).encode()
                    except (ValueError, RecursionError):
                        why = "malformed JSON"
                if why is not None:
                    reasons[n] = why
                    text = body[: keep_chars * 4].decode("utf-8", errors="backslashreplace")
                    text = text.replace(RAW_LINE_DELIMITER, "\\u001f").replace("\r", "\\r")  # the reader splits at CR
                    body = ("!unreadable " + text).encode()
                out.write(body + b"\n")
    except ActPRMError:
        raise
    except OSError as exc:  # reads raise ActPRMError above: this is the copy's disk, unless opening the input
        if exc.filename == f.path:
            raise ActPRMError(f"cannot read {f.path}: {_one_line(exc)}") from None
        raise _write_error(out_path, exc) from None
    return reasons, n


def _write_error(path: str, exc: OSError) -> ActPRMError:
    import errno

    if exc.errno == errno.ENOSPC:
        return DiskFull(f"disk full while writing the sanitized copy {path}: free space under ACTPRM_HOME and rerun")
    return ActPRMError(f"cannot write the sanitized copy {path}: {_one_line(exc)}")


TEMP_PREFIX = "ingest-"


def clean_orphan_temp_dirs(tmp_dir: Path) -> list[str]:
    """Removes the sanitized copies of ingests whose process is gone (a kill -9 skips their cleanup); returns
    their paths. A live process's copy is left alone."""
    import shutil

    removed = []
    for d in sorted(tmp_dir.glob(f"{TEMP_PREFIX}*")) if tmp_dir.is_dir() else []:
        pid = d.name[len(TEMP_PREFIX):].partition("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    if removed:
        log.info("removed %d temporary folder(s) left by killed ingests", len(removed))
    return removed


def ingest(store_or_path: Store | str | Path, paths: list[str] | str, pool: str, format: str | None = None, *,
           max_question_chars: int = 20_000, max_steps: int = 200, max_step_chars: int = 8_000,
           quarantine_raw_chars: int = 2_000, validate_shard_rows: int = 200_000,
           reports_dir: str | Path | None = None, emit: bool = True, drift_tolerance: float = 0.5,
           compress_text: bool = True, tmp_dir: str | Path | None = None,
           tracking: Tracking | None = None) -> IngestSummary:
    """Ingests `paths` into `pool`: stage -> quarantine -> dedupe/insert -> validate -> report -> register.

    Returns the summary; raises ActPRMError for unreadable inputs and when the data contract rejects
    the pool (after recording `rejected`, the summary is attached as `exc.summary`)."""
    from tasks import validate as validation

    started = time.perf_counter()
    check_pool_name(pool)  # before anything is written: the name becomes part of the report's path
    limits = IngestLimits(max_question_chars, max_steps, max_step_chars, quarantine_raw_chars)
    files = resolve_inputs(paths)
    fmt = resolve_format(files, format)
    summary = IngestSummary(pool=pool, format=fmt.name, files=[f.path for f in files])
    warm = _warm_up(tracking)
    with _opened(store_or_path) as store:
        with timed(summary, "stage"):
            digest = content_hash(files)
            stage_name = stage(store, files, fmt, limits, temporary=True, tmp_dir=tmp_dir)
        contract = dict(limits=limits, reports_dir=reports_dir, drift_tolerance=drift_tolerance)
        # The contract runs on the facts of the pool as the insert will leave it, read from the stage first, in a
        # thread while DuckDB (which releases the GIL) deduplicates and writes: Great Expectations is Python.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ingest-validate") as checker:
            try:
                with timed(summary, "quarantine"):
                    quarantine(store, stage_name, pool, fmt, files, digest, summary)
                with timed(summary, "validate"):
                    facts = validation.pool_facts(store, pool, shard_rows=validate_shard_rows, stage=stage_name)
                checking = checker.submit(_run_contract, warm, facts, pool, contract)
                with timed(summary, "dedupe"):
                    insert(store, stage_name, pool, fmt, summary, compress_text=compress_text)
            finally:
                store.drop_stage(stage_name)
            with timed(summary, "validate"):
                result = checking.result()
                if (store.pool_label_stats(pool)["trajectories"] != facts.trajectories
                        or validation.reference_of(store, pool) != facts.reference):
                    # The insert left another pool than read before it (a bug), or gave gold labels to trajectories
                    # of other registered pools (their drift reference moved): check the pool as stored.
                    log.info("validating pool %s again as stored: the insert changed what the contract compares",
                             pool)
                    result = validation.validate_pool(store, pool, shard_rows=validate_shard_rows, **contract)
        with timed(summary, "report"):
            finish(store, summary, result)
            sample = store.quarantine_sample(pool, 20)
    with timed(summary, "report"):
        summary.seconds["total"] = time.perf_counter() - started  # what report_ingest logs: all but its own time
        report_ingest(summary, emit=emit, quarantine_sample=sample, tracking=tracking)
    summary.seconds["total"] = time.perf_counter() - started
    raise_if_rejected(summary)
    return summary


def _run_contract(warm, facts, pool: str, contract: dict):
    """The data contract over `facts`, after the warm-up thread's imports (never two threads importing GX)."""
    from tasks import validate as validation

    warm.join()
    return validation.run_contract(facts, pool, **contract)


def _warm_up(tracking: Tracking | None):
    """Imports Great Expectations and MLflow and opens the MLflow store in a thread while DuckDB stages and
    dedupes (DuckDB releases the GIL): seconds of imports and store set-up a user would otherwise wait for
    after the data is in. Joined before validation; one thread, so no two threads import the same modules.
    A failure here is left for the main thread to meet and report."""
    import threading

    def work() -> None:
        try:
            import great_expectations  # noqa: F401

            if tracking is not None:
                from actprm.tracking import configure_mlflow

                configure_mlflow(tracking.tracking_uri, tracking.experiment, tracking.artifact_root)
        except Exception as exc:  # noqa: BLE001 - the main thread redoes it and raises there
            log.debug("warm-up failed: %s", exc)

    thread = threading.Thread(target=work, name="ingest-warm-up", daemon=True)
    thread.start()
    return thread


def ingest_settings(settings) -> dict:
    """`ingest()`'s keyword arguments from the typed Settings (the one place that maps them)."""
    cfg = settings.ingest
    return dict(max_question_chars=cfg.max_question_chars, max_steps=cfg.max_steps,
                max_step_chars=cfg.max_step_chars, quarantine_raw_chars=cfg.quarantine_raw_chars,
                validate_shard_rows=cfg.validate_shard_rows, reports_dir=settings.reports_dir,
                tmp_dir=settings.tmp_dir, tracking=tracking_of(settings))


def tracking_of(settings) -> Tracking:
    return Tracking(settings.tracking_uri, settings.experiment, str(settings.artifact_root))


PHASES = ("stage", "quarantine", "dedupe", "validate", "report", "total")


@contextlib.contextmanager
def timed(summary: IngestSummary, phase: str):
    """Adds the block's wall time to `summary.seconds[phase]` (one of PHASES), even when it raises."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        summary.seconds[phase] = summary.seconds.get(phase, 0.0) + time.perf_counter() - t0


def raise_if_rejected(summary: IngestSummary) -> None:
    if summary.status == "rejected":
        err = ActPRMError(f"pool {summary.pool!r} rejected by its data contract: {'; '.join(summary.failures)}")
        err.summary = summary  # type: ignore[attr-defined]
        raise err


@contextlib.contextmanager
def _opened(store_or_path: Store | str | Path):
    if isinstance(store_or_path, Store):
        yield store_or_path
    else:
        with Store(store_or_path) as store:
            yield store


def quarantine(store: Store, stage_name: str, pool: str, fmt: InputFormat, files: list[InputFile], digest: str,
               summary: IngestSummary) -> IngestSummary:
    """Opens (or reopens) the pool's registry row and moves the stage's bad lines into quarantine."""
    summary.lines_read, summary.content_hash = store.stage_counts(stage_name)["lines_read"], digest
    store.upsert_pool(pool, source=json.dumps([f.path for f in files]), format=fmt.name, content_hash=digest,
                      status="ingesting")
    summary.quarantined = store.quarantine_stage(stage_name, pool)
    return summary


def insert(store: Store, stage_name: str, pool: str, fmt: InputFormat, summary: IngestSummary, *,
           compress_text: bool = True) -> IngestSummary:
    """Deduplicates and stores the stage's good lines, then drops the stage. `compress_text=False` trades
    ~2.3x the disk for a faster insert (see `Store.insert_stage`)."""
    added = store.insert_stage(stage_name, pool, fmt.name, content_hash=receipt_key(summary),
                               compress_text=compress_text)
    summary.accepted, summary.duplicates = added["accepted"], added["duplicates"]
    summary.trajectories_added = added["trajectories_added"]
    if summary.accepted + summary.quarantined + summary.duplicates != summary.lines_read:  # pragma: no cover
        raise RuntimeError(f"ingest lost lines: {summary.as_dict()}")
    store.drop_stage(stage_name)
    return summary


def receipt_key(summary: IngestSummary) -> str:
    """What makes a rerun the same ingest as a killed one (`Store.insert_stage`): the same bytes read as the same
    format."""
    return f"{summary.content_hash}:{summary.format}"


def finish(store: Store, summary: IngestSummary, result) -> IngestSummary:
    """Records the contract verdict: `rejected` on any critical failure, else `registered`."""
    summary.failures, summary.warnings = list(result.failures), list(result.warnings)
    summary.report, summary.validated_rows = result.report, result.rows
    summary.status = "rejected" if result.failures else "registered"
    for key, lines in store.unfinished_ingests(summary.pool, but=receipt_key(summary)):
        summary.warnings.append(f"an earlier ingest into this pool (input {key[:12]}) was killed after storing "
                                f"{lines} lines; they are in the pool and validated with it, but no report counts them")
    store.finish_pool(summary.pool, status=summary.status, report=summary.report,
                      counts={k: getattr(summary, k) for k in ("lines_read", "accepted", "quarantined", "duplicates")})
    stats = store.pool_label_stats(summary.pool)
    summary.pool_trajectories, summary.labeled_fraction = stats["trajectories"], stats["labeled_fraction"]
    summary.top_reasons = store.quarantine_reasons(summary.pool)
    return summary


# ---------------------------------------------------------------------------- report & event
POOL_REGISTERED_EVENT = "actprm.pool.registered"


def report_markdown(summary: IngestSummary, quarantine_sample: list[dict] | None = None,
                    links: DataDocsLinks | None = None) -> str:
    """The Prefect artifact of an ingest. `links`: where its MLflow run serves the Data Docs over HTTP (a worker-local
    file:// path opens only on the worker's own machine, so it is the link only when tracking has no server)."""
    s = summary
    lines = [f"# Ingest of pool `{s.pool}`: {s.status}", "",
             "| lines read | accepted | quarantined | duplicates | trajectories added | pool size | labeled |",
             "|---:|---:|---:|---:|---:|---:|---:|",
             f"| {s.lines_read} | {s.accepted} | {s.quarantined} | {s.duplicates} | {s.trajectories_added} "
             f"| {s.pool_trajectories} | {s.labeled_fraction:.1%} |", "", f"Format: `{s.format}`", ""]
    if s.top_reasons:
        lines += ["## Top quarantine reasons", "", "| reason | lines |", "|---|---:|"]
        lines += [f"| {r} | {n} |" for r, n in s.top_reasons] + [""]
    for title, items in (("Contract failures (critical)", s.failures), ("Contract warnings", s.warnings)):
        if items:
            lines += [f"## {title}", ""] + [f"- {x}" for x in items] + [""]
    if links is not None:
        lines.append(f"Data Docs: [index.html]({links.download}) · [every page as a zip]({links.archive}) (unpacked, "
                     f"`data_docs/index.html` opens offline) · [MLflow run's artifacts]({links.run_page})")
    elif s.report:
        lines.append(f"Data Docs: [{s.report}](file://{Path(s.report).resolve()})")
    return "\n".join(lines)


# Resource labels the active-learning trigger in prefect.yaml matches on (Prefect's triggers match resource labels,
# not payloads): every registered ingest is announced, but only one that added trajectories and was not a step of
# another flow (the loop's own `sample` ingest) starts a loop, which buys judge labels.
ADDED_LABEL = "actprm.pool.trajectories_added"
SUBFLOW_LABEL = "actprm.ingest.subflow"
_EVENT_NAMESPACE = uuid.UUID("5b0f1c1e-8a51-4f5e-9d3c-6c2d1f0a7e11")


def pool_event_id(summary: IngestSummary) -> uuid.UUID:
    """The event's id, fixed by the pool's content: the pool, the input read into it, and the pool's size after.
    Prefect's trigger service skips an event id it has already seen, so a re-sent event (a retried task, the same
    ingest reported twice) starts one loop, not two."""
    return uuid.uuid5(_EVENT_NAMESPACE, f"{summary.pool}\0{receipt_key(summary)}\0{summary.pool_trajectories}")


def pool_event_resource(summary: IngestSummary, *, subflow: bool) -> dict[str, str]:
    """The event's resource: the pool, with the labels the trigger matches on (label values are strings)."""
    return {"prefect.resource.id": f"actprm.pool.{summary.pool}", "prefect.resource.name": summary.pool,
            ADDED_LABEL: str(summary.trajectories_added), SUBFLOW_LABEL: str(subflow).lower()}


def _inside_another_flow() -> bool:
    """Whether this runs as a subflow (or a task of one): the ingest is then a step of a bigger run."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx is not None and ctx.flow_run is not None and ctx.flow_run.parent_task_run_id is not None


def emit_pool_registered(summary: IngestSummary, *, subflow: bool | None = None):
    """Prefect event `actprm.pool.registered` (resource `actprm.pool.<name>`), so deployments can trigger
    on new pools. Returns the emitted Event (None when no events client is configured).

    `subflow` (default: from the Prefect run context) marks an ingest that runs inside another flow."""
    from prefect.events import emit_event

    subflow = _inside_another_flow() if subflow is None else subflow
    return emit_event(
        event=POOL_REGISTERED_EVENT,
        id=pool_event_id(summary),
        resource=pool_event_resource(summary, subflow=subflow),
        payload={"pool": summary.pool, "rows": summary.pool_trajectories, "added": summary.trajectories_added,
                 "labeled_fraction": summary.labeled_fraction, "format": summary.format, "subflow": subflow},
    )


@dataclass(frozen=True)
class Tracking:
    """Where an ingest records its own MLflow run (`ingest-<pool>`); see Settings.tracking_uri."""

    tracking_uri: str
    experiment: str
    artifact_root: str


def report_ingest(summary: IngestSummary, *, emit: bool = True, quarantine_sample: list[dict] | None = None,
                  tracking: Tracking | None = None) -> None:
    """Logs the summary; inside a Prefect flow posts markdown + table artifacts; records counts, the seconds of
    every phase, a quarantine sample and the Data Docs folder in an MLflow run (its own `ingest-<pool>` run with
    `tracking`, else the active run if any); emits the event on success."""
    log.info("ingest %s", json.dumps(summary.as_dict(), default=str))
    in_flow = False
    if "prefect" in sys.modules:  # a flow or task run has imported it; outside one, importing it costs seconds
        from prefect.context import FlowRunContext, TaskRunContext

        in_flow = FlowRunContext.get() is not None or TaskRunContext.get() is not None
    links = None  # the MLflow run first: the Prefect artifact links its Data Docs
    if tracking is not None:
        from actprm.tracking import configure_mlflow, start_run

        configure_mlflow(tracking.tracking_uri, tracking.experiment, tracking.artifact_root)
        with start_run(f"ingest-{summary.pool}", tags={"actprm.stage": "ingest", "actprm.pool": summary.pool,
                                                      "actprm.ingest.status": summary.status}) as run:
            links = _log_to_mlflow(summary, quarantine_sample, run)
    elif "mlflow" in sys.modules:
        import mlflow

        if (run := mlflow.active_run()) is not None:
            links = _log_to_mlflow(summary, quarantine_sample, run)
    if in_flow:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        key = "ingest-" + "".join(c if c.isalnum() else "-" for c in summary.pool.lower())
        create_markdown_artifact(markdown=report_markdown(summary, links=links), key=key,
                                 description=f"ingest of {summary.pool}")
        create_table_artifact(table=[{"reason": r, "lines": n} for r, n in summary.top_reasons] or
                              [{"reason": "(none)", "lines": 0}], key=key + "-quarantine",
                              description="quarantine reasons")
    if emit and summary.status == "registered":
        # Events need a Prefect API (a server, a flow run, or prefect_test_harness); without one,
        # emit_event would try to start an ephemeral server just for this, so we skip it.
        from prefect.settings import get_current_settings

        if in_flow or get_current_settings().api.url:
            try:
                emit_pool_registered(summary)
            except Exception as exc:  # an unreachable API must not undo a registered pool
                log.warning("could not emit %s for pool %s: %s", POOL_REGISTERED_EVENT, summary.pool, exc)
        else:
            log.info("no Prefect API configured: event %s not emitted", POOL_REGISTERED_EVENT)


def _log_to_mlflow(summary: IngestSummary, quarantine_sample: list[dict] | None, run) -> DataDocsLinks | None:
    """Into the active MLflow run `run`: counts, `ingest.seconds.<phase>` (the phases timed so far), summary, sample,
    Data Docs. Returns the Data Docs' HTTP links when tracking through a server."""
    import mlflow

    from actprm.tracking import is_tracking_server

    metrics = {f"ingest.{k}": float(getattr(summary, k)) for k in
               ("lines_read", "accepted", "quarantined", "duplicates", "trajectories_added", "labeled_fraction")}
    metrics.update({f"ingest.seconds.{k}": float(v) for k, v in summary.seconds.items()})
    mlflow.log_metrics(metrics)
    mlflow.log_dict(summary.as_dict(), f"ingest/{summary.pool}/summary.json")
    mlflow.log_dict({"sample": quarantine_sample or []}, f"ingest/{summary.pool}/quarantine_sample.json")
    if not summary.report:
        return None
    folder = f"ingest/{summary.pool}/data_docs"
    mlflow.log_artifacts(str(Path(summary.report).parent), folder)
    uri = mlflow.get_tracking_uri()
    if not is_tracking_server(uri):
        return None
    # A browser saves what the server sends (MLflow serves artifacts as attachments), one file at a time: the site
    # as one zip opens, unpacked, with every page and asset.
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(zip_site(Path(summary.report).parent, Path(tmp) / "data_docs.zip")),
                            f"ingest/{summary.pool}")
    return artifact_links(uri, run.info.experiment_id, run.info.run_id, f"{folder}/{Path(summary.report).name}",
                          archive_path=f"{folder}.zip")
