"""Opening the project's DuckDB file: the single-writer lock, schema migrations, transactions.

DuckDB allows one read-write *process* per file, so connections here are short-lived: a stage
opens the store, does its work, and closes it, and a second process waits for the lock (bounded)
and then fails with a clear message instead of crashing or corrupting the file.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import duckdb

from actprm.store.parsing import quote_ident, quote_literal
from actprm.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION


class StoreLockedError(RuntimeError):
    """Another process holds the DuckDB file for writing."""


def same_family(column: str, param: str) -> str:
    """SQL: the prompt version in `column` is of the same family as `param` (the name before '-vN')."""
    return f"regexp_replace({column}, '-v[0-9]+$', '') = regexp_replace({param}, '-v[0-9]+$', '')"


class Connection:
    """A short-lived handle on the project's DuckDB file (use as a context manager): opening, locking,
    transactions. `Store` adds the queries of every stage to it."""

    def __init__(self, path: str | Path, *, read_only: bool = False, lock_timeout_s: float = 60.0):
        self.path = Path(path)
        self.read_only = read_only
        self.lock_timeout_s = lock_timeout_s
        self.con: duckdb.DuckDBPyConnection | None = None

    def open(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                if self.read_only and not self.path.exists():
                    self.con = duckdb.connect(str(self.path))  # create, then serve reads
                else:
                    self.con = duckdb.connect(str(self.path), read_only=self.read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() >= deadline:
                    raise StoreLockedError(
                        f"DuckDB file {self.path} is in use by another process (waited {self.lock_timeout_s:.0f}s); "
                        "only one writer may hold it: wait for the other run or use another ACTPRM_HOME"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        if not self.read_only:
            self.con.execute(SCHEMA)
            row = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            for version in range(int(row[0]) + 1 if row else SCHEMA_VERSION + 1, SCHEMA_VERSION + 1):
                self.con.execute(MIGRATIONS[version])
            self.con.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
            )
        return self

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        assert self.con is not None
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        else:
            self.con.execute("COMMIT")

    def sql(self, query: str, params: list | None = None):
        """Run a query owned by `actprm.store`; returns a DuckDB relation/result."""
        assert self.con is not None, "store is not open"
        return self.con.execute(query, params or [])

    # Identifiers and literals the stage modules splice into SQL (table names of ingest stages, suffixes).
    _q = staticmethod(quote_ident)
    _lit = staticmethod(quote_literal)
