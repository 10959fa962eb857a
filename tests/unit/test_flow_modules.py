"""Prefect loads a deployment's entrypoint (flows/<name>.py) as a script, with flows/ on sys.path: a module there
named like a top-level package (flows/tasks.py once shadowed `tasks`) makes every deployment run crash on import."""

from __future__ import annotations

import importlib.util
from pathlib import Path

FLOWS = Path(__file__).resolve().parents[2] / "flows"


def test_no_flow_module_shadows_an_importable_top_level_module():
    shadowing = [p.name for p in FLOWS.glob("*.py")
                 if p.stem != "__init__" and importlib.util.find_spec(p.stem) is not None]
    assert not shadowing, f"rename these: as scripts' neighbours they hide a package of the same name: {shadowing}"
