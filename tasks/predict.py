"""Use a PRM: score trajectories from a file (`actprm predict`) and pick the best of N candidates (`actprm rerank`).

Input files are read by the same parser as ingest (any registered input format, JSONL/.gz/.zst/Parquet), into a
throw-away DuckDB stage: nothing is stored as a pool, every line is either scored or reported with the reason it
could not be. Scoring is batched and length-bucketed as in the score stage (`tasks.score.score_trajectories`).

No silent truncation: the token budget for inference defaults to the backbone's full context (not the training
cut), and a step that still does not fit is counted (`truncated_steps` per trajectory and in the summary); unless
`allow_truncation`, any such step makes the command fail after writing its output.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actprm.errors import ActPRMError
from models.inference import inference_max_length
from tasks.score import check_truncation, score_steps, truncation_report

# Best-of-N aggregations of a candidate's step scores (higher = better solution).
AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    # Math-Shepherd (Wang et al., 2024, arXiv 2312.08935): a solution is as good as its worst step.
    "min": min,
    # Lightman et al. (2023, "Let's Verify Step by Step"): P(every step is correct), the product.
    "prod": math.prod,
    # The last step's score: how likely the whole chain up to the answer is correct.
    "last": lambda scores: scores[-1],
    "mean": lambda scores: sum(scores) / len(scores),
}
DEFAULT_AGGREGATE = "min"


def aggregate(step_scores: list[float], how: str = DEFAULT_AGGREGATE) -> float:
    """One score per candidate; -inf when no step was scored (it cannot be chosen over a scored one)."""
    if how not in AGGREGATES:
        raise ActPRMError(f"unknown aggregate {how!r}; choose one of: {', '.join(AGGREGATES)}")
    return float(AGGREGATES[how](step_scores)) if step_scores else -math.inf


# -- reading --------------------------------------------------------------------------------------
def read_trajectories(paths: list[str] | str, format: str | None = None, *, limits=None,
                      group_key: str | None = "group") -> tuple[list[dict], list[dict], str, int]:
    """(trajectories, rejected lines, format name, lines read) of input files in any supported format.

    A trajectory: {id, source, line, question, steps, group}; `id` is the record's own id (PRMBench's idx with
    ':original'/':modified') or else its content hash; `group` is the record's `group_key` field when it has one,
    else its question. Rejected: {source, line, reason}, for lines that are not usable records."""
    from actprm.store import Store
    from tasks.ingest import IngestLimits, resolve_format, resolve_inputs, stage

    files = resolve_inputs(paths)
    fmt = resolve_format(files, format)
    with tempfile.TemporaryDirectory(prefix="actprm-predict-") as tmp, Store(Path(tmp) / "predict.duckdb") as store:
        name = stage(store, files, fmt, limits or IngestLimits(), temporary=True)
        rows = store.staged_trajectories(name)
        groups = {i: store.record_field(f.path, f.kind, group_key) for i, f in enumerate(files)} if group_key else {}
    trajectories, rejected, lines = [], [], set()
    for r in rows:
        lines.add((r["file_idx"], r["line_no"]))
        if r["reason"] is not None:
            rejected.append({"source": r["source"], "line": r["line_no"], "reason": r["reason"]})
            continue
        group = groups.get(r["file_idx"], {}).get(r["line_no"])
        trajectories.append({"id": r["source_id"] or r["id"], "source": r["source"], "line": r["line_no"],
                             "question": r["question"], "steps": r["steps"],
                             "group": group if group is not None else r["question"]})
    return trajectories, rejected, fmt.name, len(lines)


# -- the commands ------------------------------------------------------------------------------------
def _load(model: str | None, model_name: str):
    import torch

    from tasks.export import model_reference
    from tasks.model_source import load_model

    reference = model_reference(model, model_name)
    device = "cuda" if torch.cuda.is_available() else None
    prm, tokenizer, version = load_model(reference, device=device)
    return reference, prm, tokenizer, version


def _write_jsonl(path: str | Path, records: list[dict]) -> None:
    """Written beside the target and renamed into place: a crash never leaves a half-written output."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    tmp.replace(out)


def predict(model: str | None, data: list[str] | str, output: str | Path, *, model_name: str,
            format: str | None = None, batch_size: int = 32, max_length: int | None = None,
            allow_truncation: bool = False, progress: bool = True, limits=None) -> dict:
    """`actprm predict`: one output line per trajectory of `data`:
    {"id", "source", "line", "step_scores", "step_std", "uncertain", "truncated_steps"}."""
    trajectories, rejected, fmt, lines = read_trajectories(data, format, limits=limits, group_key=None)
    reference, prm, tokenizer, version = _load(model, model_name)
    budget = inference_max_length(prm, max_length)
    scores = score_steps(prm, tokenizer, trajectories, batch_size=batch_size, max_length=budget, progress=progress)
    _write_jsonl(output, [{"id": t["id"], "source": t["source"], "line": t["line"], **s}
                          for t, s in zip(trajectories, scores)])
    report = truncation_report(scores, budget)
    summary = {"output": str(output), "model": reference, "model_version": version, "format": fmt,
               "lines_read": lines, "trajectories": len(trajectories), "rejected_lines": len(rejected),
               "rejected_sample": rejected[:10], "uncertain": sum(s["uncertain"] for s in scores), **report}
    check_truncation(report, allow_truncation, "predict")
    return summary


def rerank_scored(trajectories: list[dict], scores: list[dict], how: str = DEFAULT_AGGREGATE) -> list[dict]:
    """Best-of-N per group, in first-seen group order: every candidate's aggregate score and the chosen one (the
    highest; the first in input order on a tie)."""
    groups: dict[str, list[dict]] = {}
    for t, s in zip(trajectories, scores, strict=True):
        groups.setdefault(str(t["group"]), []).append(
            {"id": t["id"], "line": t.get("line"), "score": aggregate(s["step_scores"], how),
             "truncated_steps": s["truncated_steps"]})
    out = []
    for group, candidates in groups.items():
        best = max(range(len(candidates)), key=lambda i: (candidates[i]["score"], -i))
        out.append({"group": group, "aggregate": how, "chosen": candidates[best]["id"], "chosen_index": best,
                    "chosen_score": candidates[best]["score"], "candidates": candidates})
    return out


def rerank_candidates(model, tokenizer, candidates: list[dict], how: str = DEFAULT_AGGREGATE, *,
                      batch_size: int = 32, max_length: int | None = None) -> list[dict]:
    """The Python API of best-of-N: candidates [{question, steps, id?, group?}] -> one result per group (see
    `rerank_scored`); the group is `group` when given, else the question."""
    aggregate([1.0], how)  # an unknown aggregate fails before any scoring
    trajectories = [{"id": c.get("id", i), "line": None, "question": c["question"], "steps": c["steps"],
                     "group": c.get("group", c["question"])} for i, c in enumerate(candidates)]
    scores = score_steps(model, tokenizer, trajectories, batch_size=batch_size, max_length=max_length)
    return rerank_scored(trajectories, scores, how)


def rerank(model: str | None, data: list[str] | str, output: str | Path, *, model_name: str,
           how: str = DEFAULT_AGGREGATE, group_key: str = "group", format: str | None = None,
           batch_size: int = 32, max_length: int | None = None, allow_truncation: bool = False,
           progress: bool = True, limits=None) -> dict[str, Any]:
    """`actprm rerank`: one output line per group: {"group", "aggregate", "chosen", "chosen_score", "candidates":
    [{"id", "line", "score", "truncated_steps"}]}."""
    aggregate([1.0], how)
    trajectories, rejected, fmt, lines = read_trajectories(data, format, limits=limits, group_key=group_key)
    reference, prm, tokenizer, version = _load(model, model_name)
    budget = inference_max_length(prm, max_length)
    scores = score_steps(prm, tokenizer, trajectories, batch_size=batch_size, max_length=budget, progress=progress,
                         desc="rerank")
    groups = rerank_scored(trajectories, scores, how)
    _write_jsonl(output, groups)
    report = truncation_report(scores, budget)
    summary = {"output": str(output), "model": reference, "model_version": version, "format": fmt,
               "aggregate": how, "lines_read": lines, "candidates": len(trajectories), "groups": len(groups),
               "rejected_lines": len(rejected), "rejected_sample": rejected[:10], **report}
    check_truncation(report, allow_truncation, "rerank")
    return summary
