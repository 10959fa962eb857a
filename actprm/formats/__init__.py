"""Input formats of trajectory pools, registered in `FORMATS` and auto-detected from record keys.

A format is *data*: which JSON keys hold the question, the steps and the gold labels, and how the
labels are encoded. `actprm.store.parsing` turns a format into the DuckDB SQL that extracts and validates
every line, so adding a format with a known label encoding is one new module and no SQL.
"""

from __future__ import annotations

from actprm.formats.spec import FORMATS, InputFormat, View, detect_format

# Importing the modules registers their formats.
from actprm.formats import benchmarks, native  # noqa: E402,F401

__all__ = ["FORMATS", "InputFormat", "View", "detect_format"]
