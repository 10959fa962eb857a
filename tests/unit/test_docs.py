"""The front door stays a front door: README.md is short, and every file a doc points at exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/ARCHITECTURE.md", "docs/OPERATIONS.md", "bench/results/README.md", "study/README.md",
        "study/FINDINGS.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_is_at_most_12_kb():
    """Findings, variants and long tables belong in results files (issue 37): a README past 12 KB has grown one."""
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_points_at_a_file_in_the_repo(doc):
    path = ROOT / doc
    targets = [t for t in LINK.findall(path.read_text()) if "://" not in t]
    missing = [t for t in targets if not (path.parent / t).exists()]
    assert not missing, f"{doc} links to {missing}"
