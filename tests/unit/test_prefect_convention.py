"""One Prefect convention (issue 37): the stages in tasks/ are plain functions, and every Prefect task of the product
is one line in flows/prefect_tasks.py, where a reader finds its name, retries and cache policy; each one is used."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Flows whose tasks are their own steps, not stages: the ingest flow's (kept there, the flow imports no torch or
# MLflow, which flows/prefect_tasks.py brings with the stages) and the study wing's.
OWN_TASKS = {"flows/ingest_pool.py", "study/flow.py"}


def _is_task(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "task") or (
        isinstance(node, ast.Attribute) and node.attr == "task" and isinstance(node.value, ast.Name)
        and node.value.id == "prefect")


def _creates_a_task(tree: ast.AST) -> bool:
    """`@task`, `@task(...)`, `task(...)(fn)` or `prefect.task(...)` anywhere in the module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_task(node.func):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(map(_is_task, node.decorator_list)):
            return True
    return False


def test_prefect_tasks_are_made_only_in_flows_prefect_tasks():
    makers = sorted(str(path.relative_to(ROOT)) for folder in ("tasks", "flows", "actprm", "models", "actprm_cli")
                    for path in (ROOT / folder).rglob("*.py")
                    if _creates_a_task(ast.parse(path.read_text(encoding="utf-8"))))
    assert makers == ["flows/ingest_pool.py", "flows/prefect_tasks.py"], makers
    assert all(_creates_a_task(ast.parse((ROOT / f).read_text(encoding="utf-8"))) for f in OWN_TASKS)


def test_no_module_level_getattr_hides_a_wrapper():
    assert not [p for folder in ("tasks", "flows") for p in (ROOT / folder).rglob("*.py")
                if "__getattr__" in p.read_text(encoding="utf-8")]


def test_every_wrapper_has_a_caller():
    import flows.prefect_tasks as pt

    wrappers = [name for name in vars(pt) if name.endswith("_task") and hasattr(getattr(pt, name), "fn")]
    callers = "".join(p.read_text(encoding="utf-8") for folder in ("flows", "study", "actprm_cli")
                      for p in (ROOT / folder).rglob("*.py") if p.name != "prefect_tasks.py")
    unused = [name for name in wrappers if not re.search(rf"\b(pt|prefect_tasks)\.{name}\b", callers)]
    assert len(wrappers) >= 20 and not unused, unused
