"""Evaluate a PRM: ProcessBench F1 and PRMBench PRMScore, from a model or from a predictions file.

The metrics live in `actprm.metrics` (pure functions of records and step scores); this stage only
reads benchmark files, predictions, models and the store, turns trajectories into step scores and
calls them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actprm.errors import ActPRMError
from actprm.formats.benchmarks import PRMBENCH, PRMBENCH_ORIGINALS_FROM
from actprm.metrics import (DEFAULT_THRESHOLD, ORIGINALS, predicted_first_error, prmbench_key, prmbench_metrics,
                            processbench_crossfit, processbench_metrics, processbench_tuned, require_scores,
                            step_calibration)
from actprm.runlog import stage_logger

log = logging.getLogger(__name__)


# -- files -----------------------------------------------------------------------------------
# ProcessBench (Zheng et al., 2024) ships its four subsets as four JSON-array files named after them (the Hugging
# Face repo Qwen/ProcessBench: gsm8k.json, math.json, olympiadbench.json, omnimath.json; its Parquet conversion puts
# each under a folder of that name); the official score is the mean of their F1s.
PROCESSBENCH_SUBSETS = ("gsm8k", "math", "olympiadbench", "omnimath")
EVAL_SUFFIXES = (".jsonl", ".json", ".parquet")
POOLED = "pooled"
BENCHMARKS = ("processbench", "prmbench")


def _json_lines(path: Path) -> list[tuple[int, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return list(enumerate(pq.read_table(path).to_pylist(), 1))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
            raise ActPRMError(f"{path}: cannot read as Parquet ({str(exc).splitlines()[0]})") from None
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ActPRMError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, list):
            raise ActPRMError(f"{path}: a .json evaluation file must hold a list of records")
        return list(enumerate(data, 1))
    out = []
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ActPRMError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    return out


def _eval_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in EVAL_SUFFIXES)
        if not files:
            raise ActPRMError(f"{path}: no .jsonl, .json or .parquet files in this folder")
        return files
    if not path.is_file():
        raise ActPRMError(f"evaluation data not found: {path}")
    return [path]


def _subset_of_file(f: Path) -> str:
    """A subset named by its file (gsm8k.json) or, for a Parquet shard (0000.parquet, gsm8k-00000-of-00001.parquet),
    by the shard's name before its number, else its folder's name (the Hub's refs/convert/parquet layout)."""
    stem = re.sub(r"-\d+-of-\d+$", "", f.stem)
    return f.parent.name if stem.isdigit() or stem in ("train", "test", "validation") else stem


def read_eval_data(path: str | Path) -> tuple[str, list[dict]]:
    """Read ProcessBench-format (`id`, `problem`, `steps`, `label`) or PRMBench-format records (`read_eval_set`)."""
    kind, records, _ = read_eval_set(path)
    return kind, records


def read_eval_set(path: str | Path) -> tuple[str, list[dict], dict[str, Any]]:
    """(kind, records, notes) of a benchmark file or folder, read as the benchmark's own code reads it.

    A folder reads every .jsonl/.json/.parquet file under it, sorted by path (ProcessBench ships one file per
    subset). A ProcessBench record's subset is its `subset` field, else its file's (`_subset_of_file`); one file
    of records without a `subset` field whose name is no ProcessBench subset is one POOLED set.
    PRMBench is read as mr_eval's prmtest_classified task does: records keyed by (classification, idx), a
    repeated key keeps its first record (the test split repeats five in multi_solutions), and each `redundency`
    record adds its problem's original solution as an all-correct record of classification "correct",
    keyed "correct_<idx>" (actprm.metrics.ORIGINALS), scored apart from the total.
    """
    kind = None
    records: list[dict] = []
    files = _eval_files(Path(path))
    notes: dict[str, Any] = {}
    for f in files:
        for n, rec in _json_lines(f):
            if not isinstance(rec, dict):
                raise ActPRMError(f"{f}:{n}: expected a JSON object")
            this = "prmbench" if "modified_process" in rec else "processbench"
            if kind and this != kind:
                raise ActPRMError(f"{f}:{n}: mixes {this} records into a {kind} evaluation set")
            kind = this
            need = (("idx", "classification", "modified_process", "error_steps") if this == "prmbench"
                    else ("id", "problem", "steps", "label"))
            missing = [k for k in need if k not in rec]
            if missing:
                raise ActPRMError(f"{f}:{n}: {this} record lacks {', '.join(missing)}")
            _check_record_types(rec, this, f"{f}:{n}")
            if this == "processbench":
                subset = rec.get("subset") or _subset_of_file(f)
                if not rec.get("subset") and len(files) == 1 and subset not in PROCESSBENCH_SUBSETS:
                    subset = POOLED
                rec = {**rec, "id": str(rec["id"]), "label": int(rec["label"]), "subset": subset,
                       "steps": list(rec["steps"])}
            else:
                rec = {**rec, "idx": str(rec["idx"]), "error_steps": [int(e) for e in rec["error_steps"]],
                       "modified_process": list(rec["modified_process"])}
            records.append(rec)
    if not records:
        raise ActPRMError(f"{path}: no evaluation records")
    if kind == "prmbench":
        records, notes = _prmbench_as_mr_eval(records)
    else:
        subsets = sorted({r["subset"] for r in records})
        notes["averaging"] = ("pooled: one file without subsets, F1 over all its records (ProcessBench's official "
                              "score is the mean F1 of its four subsets)" if subsets == [POOLED] else
                              f"mean F1 of {len(subsets)} subsets")
        absent = [s for s in PROCESSBENCH_SUBSETS if s not in subsets]
        if subsets != [POOLED] and set(subsets) <= set(PROCESSBENCH_SUBSETS) and absent:
            notes["missing_subsets"] = absent
    # Scores are matched to records by key: a repeated key would judge a record on another one's scores.
    keys = Counter(prmbench_key(r) if kind == "prmbench" else r["id"] for r in records)
    if len(keys) != len(records):
        twice = next(k for k, n in keys.items() if n > 1)
        raise ActPRMError(f"{path}: record {twice!r} appears twice; evaluation ids must be unique across the set "
                          "(e.g. prefix them with their subset)")
    return kind, records, notes


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_record_types(rec: dict, kind: str, where: str) -> None:
    """A clear one-line error for a record whose fields have the wrong types (before they are converted)."""
    steps_key = "steps" if kind == "processbench" else "modified_process"
    if not isinstance(rec[steps_key], list) or not all(isinstance(x, str) for x in rec[steps_key]):
        raise ActPRMError(f"{where}: {steps_key} must be a list of strings")
    if kind == "processbench" and not _is_int(rec["label"]):
        raise ActPRMError(f"{where}: label must be an integer (0-based first wrong step, or -1)")
    if kind == "prmbench" and (not isinstance(rec["error_steps"], list) or not all(map(_is_int, rec["error_steps"]))):
        raise ActPRMError(f"{where}: error_steps must be a list of 1-based step numbers")
    original = rec.get("original_process") if kind == "prmbench" else None
    if original is not None and not (isinstance(original, list) and all(isinstance(x, str) for x in original)):
        raise ActPRMError(f"{where}: original_process must be a list of strings")


def _prmbench_as_mr_eval(lines: list[dict]) -> tuple[list[dict], dict[str, Any]]:
    """mr_eval's load_data_function: first record per (classification, idx), plus one original per problem."""
    seen: set[str] = set()
    records: list[dict] = []
    repeated = 0
    for rec in lines:
        if rec["classification"] == PRMBENCH_ORIGINALS_FROM and "original_process" in rec:
            original = {"idx": rec["idx"], "classification": ORIGINALS,
                        "modified_question": rec.get("original_question") or rec.get("question") or "",
                        "modified_process": list(rec["original_process"]), "error_steps": []}
            if prmbench_key(original) not in seen:
                seen.add(prmbench_key(original))
                records.append(original)
        key = prmbench_key(rec)
        if key in seen:
            repeated += 1
            continue
        seen.add(key)
        records.append(rec)
    originals = sum(r["classification"] == ORIGINALS for r in records)
    return records, {"lines": len(lines), "repeated_keys_dropped": repeated, "originals": originals}


def _read_dev(dev_data_path: str | Path, kind: str, records: list[dict]) -> list[dict]:
    """The dev split a ProcessBench threshold is tuned on: ProcessBench records that are not test records."""
    if kind != "processbench":
        raise ActPRMError("--dev-data tunes the ProcessBench step threshold; PRMBench's PRMScore is defined at 0.5")
    dev_kind, dev_records = read_eval_data(dev_data_path)
    if dev_kind != "processbench":
        raise ActPRMError(f"{dev_data_path}: threshold tuning needs a ProcessBench-format dev split, not {dev_kind}")
    shared = {r["id"] for r in records} & {r["id"] for r in dev_records}
    if shared:
        raise ActPRMError(f"{dev_data_path}: {len(shared)} dev record(s) are also test records "
                          f"(e.g. {sorted(shared)[0]!r}); tune the threshold on records the test set does not hold")
    return dev_records


def _check_scores(key: str, scores: Any, where: str) -> list[float]:
    if not isinstance(scores, list) or not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                                               for s in scores):
        raise ActPRMError(f"{where}: step_scores of {key!r} must be a list of numbers")
    if any(math.isnan(s) or math.isinf(s) for s in scores):
        raise ActPRMError(f"{where}: step_scores of {key!r} contain NaN or infinity")
    return [float(s) for s in scores]


def read_predictions(path: str | Path, keep_first: bool = False) -> dict[str, list[float]]:
    """Read {"id": ..., "step_scores": [...]} lines (PRMBench lines may use `idx` instead of `id`).

    `keep_first`: a repeated id keeps its first scores, as mr_eval filters its results (a PRM run over PRMBench's
    test split as shipped scores its repeated records twice); otherwise a repeated id is an error."""
    p = Path(path)
    if not p.is_file():
        raise ActPRMError(f"predictions file not found: {p}")
    out: dict[str, list[float]] = {}
    for n, rec in _json_lines(p):
        if not isinstance(rec, dict) or "step_scores" not in rec or not ("id" in rec or "idx" in rec):
            raise ActPRMError(f"{p}:{n}: expected an object with `id` (or `idx`) and `step_scores`")
        key = str(rec["id"] if "id" in rec else rec["idx"])
        if key in out:
            if keep_first:
                continue
            raise ActPRMError(f"{p}:{n}: id {key!r} appears twice")
        out[key] = _check_scores(key, rec["step_scores"], f"{p}:{n}")
    return out


def _match_scores(kind: str, records: list[dict], predictions: dict[str, list[float]]) -> dict[str, list[float]]:
    """Scores keyed like the metric functions expect; a clear error names the first missing ids."""
    if kind == "processbench":
        keys = {r["id"]: r["id"] for r in records}
    else:
        plain = [r["idx"] for r in records if r["classification"] != ORIGINALS]
        unique_plain = len(set(plain)) == len(plain)
        # `<classification>_<idx>` always works; a bare `idx` only where it is unique in the data (never for the
        # originals, whose idx their redundency record shares).
        keys = {prmbench_key(r): (prmbench_key(r) if prmbench_key(r) in predictions or not unique_plain
                                  or r["classification"] == ORIGINALS else r["idx"]) for r in records}
    require_scores(list(keys.values()), predictions)
    return {k: predictions[v] for k, v in keys.items()}


def _without_unscored_originals(records: list[dict], predictions: dict[str, list[float]], notes: dict) -> list[dict]:
    """A predictions file with no score for any original is evaluated on the modified processes alone (their
    PRMScore does not depend on the originals); one that scores some originals must score them all."""
    originals = [r for r in records if r["classification"] == ORIGINALS]
    if originals and not any(prmbench_key(r) in predictions for r in originals):
        notes["originals"] = f"not scored: the predictions have no 'correct_<idx>' line for the {len(originals)} originals"
        return [r for r in records if r["classification"] != ORIGINALS]
    return records


def _check_lengths(kind: str, records: list[dict], scores: dict[str, list[float]]) -> None:
    for r in records:
        key = r["id"] if kind == "processbench" else prmbench_key(r)
        n_steps = len(r["steps"] if kind == "processbench" else r["modified_process"])
        if len(scores[key]) > n_steps:
            raise ActPRMError(f"id {key!r} has {len(scores[key])} step scores for {n_steps} steps")


def evaluate_predictions(data_path: str | Path, predictions_path: str | Path, *,
                         threshold: float = DEFAULT_THRESHOLD, dev_data_path: str | Path | None = None) -> dict:
    """Score a predictions file against an evaluation set (ProcessBench F1 or PRMBench PRMScore).

    With `dev_data_path` (ProcessBench only), the threshold is tuned on that split, whose scores
    are read from the same predictions file.
    """
    kind, records, notes = read_eval_set(data_path)
    dev_records = None if dev_data_path is None else _read_dev(dev_data_path, kind, records)
    predictions = read_predictions(predictions_path, keep_first=kind == "prmbench")
    if kind == "prmbench":
        records = _without_unscored_originals(records, predictions, notes)
    scores = _match_scores(kind, records, predictions)
    _check_lengths(kind, records, scores)
    if kind == "prmbench":
        return {"benchmark": "prmbench", **prmbench_metrics(records, scores), "data_notes": notes}
    if dev_records is None:
        return {"benchmark": "processbench", **processbench_metrics(records, scores, threshold), "data_notes": notes}
    dev_scores = _match_scores("processbench", dev_records, predictions)
    _check_lengths("processbench", dev_records, dev_scores)
    return {"benchmark": "processbench", **processbench_tuned(records, dev_records, {**scores, **dev_scores}),
            "data_notes": notes}


# -- models ----------------------------------------------------------------------------------
def predict_step_scores(model, tokenizer, questions: list[str], steps_lists: list[list[str]], *,
                        batch_size: int = 32, max_length: int = 512,
                        truncated: list[int] | None = None) -> list[list[float]]:
    """Mean over the ensemble heads of P(step correct), per trajectory (scored steps only). `truncated`, when given,
    receives each trajectory's count of steps past `max_length` (left unscored)."""
    import torch

    from models import StepBatcher

    batcher = StepBatcher(tokenizer, max_length=max_length)
    model.eval()
    out: list[list[float]] = []
    with torch.no_grad():
        for start in range(0, len(questions), batch_size):
            batch = batcher.encode(questions[start:start + batch_size], steps_lists[start:start + batch_size])
            if truncated is not None:
                truncated.extend(batch.truncated_steps)
            for probs in model.step_probabilities(batch):
                out.append(probs.float().mean(dim=0).tolist())
    return out


def _device() -> str | None:
    import torch

    return "cuda" if torch.cuda.is_available() else None


def _score_records(kind: str, records: list[dict], model, tokenizer, batch_size: int, max_length: int,
                   truncated: list[int] | None = None):
    if kind == "processbench":
        keys = [r["id"] for r in records]
        questions = [r["problem"] for r in records]
        steps = [list(r["steps"]) for r in records]
    else:
        keys = [prmbench_key(r) for r in records]
        questions = [r.get("modified_question") or r.get("question") or "" for r in records]
        # the steps as ingest stores them: without the numbering that mr_eval's remove_step_prefix cuts
        clean = PRMBENCH.views[1].clean_step
        steps = [[clean(step) for step in r["modified_process"]] for r in records]
    scores = predict_step_scores(model, tokenizer, questions, steps, batch_size=batch_size, max_length=max_length,
                                 truncated=truncated)
    return dict(zip(keys, scores))


def _truncation(scores: list[list[float]], truncated: list[int], max_length: int, allow: bool) -> dict:
    """The count of steps left unscored, refused (one-line error) unless allowed: a benchmark metric computed on
    fewer than all steps is not the benchmark's metric."""
    from tasks.score import check_truncation, truncation_report

    report = truncation_report([{"step_scores": s, "truncated_steps": t} for s, t in zip(scores, truncated)],
                               max_length)
    check_truncation(report, allow, "evaluate")
    return report


def evaluate_model(model_dir_or_uri: str | Path, data_path: str | Path, *, batch_size: int = 32,
                   max_length: int | None = None, threshold: float = DEFAULT_THRESHOLD,
                   dev_data_path: str | Path | None = None, allow_truncation: bool = False) -> dict:
    """Evaluate a saved PRM (a save_pretrained folder or an MLflow `models:/...` URI) on a benchmark file.

    `max_length` None scores at the backbone's whole context; steps that still do not fit are counted
    (`truncated_steps`) and refused unless `allow_truncation`."""
    from tasks.model_source import load_model
    from models.inference import inference_max_length

    kind, records, notes = read_eval_set(data_path)
    dev_records = None if dev_data_path is None else _read_dev(dev_data_path, kind, records)  # before the model loads
    model, tokenizer, version = load_model(model_dir_or_uri, device=_device())
    max_length = inference_max_length(model, max_length)
    truncated: list[int] = []
    scores = _score_records(kind, records, model, tokenizer, batch_size, max_length, truncated)
    result: dict[str, Any] = {"benchmark": kind, "model": str(model_dir_or_uri), "model_version": version,
                              "data_notes": notes,
                              **_truncation(list(scores.values()), truncated, max_length, allow_truncation)}
    if kind == "prmbench":
        return {**result, **prmbench_metrics(records, scores)}
    if dev_records is None:
        return {**result, **processbench_metrics(records, scores, threshold)}
    dev_truncated: list[int] = []
    dev_scores = _score_records("processbench", dev_records, model, tokenizer, batch_size, max_length, dev_truncated)
    dev_report = _truncation(list(dev_scores.values()), dev_truncated, max_length, allow_truncation)
    result["dev_truncated_steps"] = dev_report["truncated_steps"]
    return {**result, **processbench_tuned(records, dev_records, {**scores, **dev_scores})}


def eval_set_id(pool: str, split: str, trajectory_ids: list[str]) -> str:
    """Names a fixed evaluation set, so F1s are only compared when measured on the same trajectories."""
    digest = hashlib.sha256("\n".join(sorted(trajectory_ids)).encode()).hexdigest()[:12]
    return f"{pool}:{split}:{digest}"


def evaluate_on_store(store, pool: str, model, tokenizer, split: str = "eval", *, batch_size: int = 32,
                      max_length: int = 512, threshold: float = DEFAULT_THRESHOLD,
                      allow_truncation: bool = True) -> dict:
    """ProcessBench-style F1 on a pool's held-out split, against the gold labels in the store.

    One subset named after the pool; `error_kinds` adds accuracy per gold error kind (the
    synthetic pool's injected error, PRMBench's classification), and `eval_set` names the set.
    """
    ids = store.pool_trajectory_ids(pool, split)
    trajectories = [t for t in store.trajectories(ids) if t["gold_first_error"] is not None]
    if not trajectories:
        raise ActPRMError(f"pool {pool!r} has no gold-labeled trajectories in its {split!r} split to evaluate on")
    truncated: list[int] = []
    scores = predict_step_scores(model, tokenizer, [t["question"] for t in trajectories],
                                 [t["steps"] for t in trajectories], batch_size=batch_size, max_length=max_length,
                                 truncated=truncated)
    report = _truncation(scores, truncated, max_length, allow_truncation)
    by_id = {t["id"]: s for t, s in zip(trajectories, scores)}
    records = [{"id": t["id"], "label": int(t["gold_first_error"]), "subset": pool} for t in trajectories]
    result = processbench_metrics(records, by_id, threshold)
    # F1 at a threshold tuned on held-out folds of the same split (`processbench_crossfit`): tells a model that
    # ranks steps well but scores them off-centre from one that ranks them badly. The gate keeps using `f1`.
    if len(records) >= 2:
        tuned = processbench_crossfit(records, by_id)
        result["f1_tuned"], result["threshold_tuned"] = tuned["f1"], tuned["threshold"]
    kinds: dict[str, dict[str, float]] = {}
    for t in trajectories:
        kind = t["error_kind"] or ("none" if t["gold_first_error"] == -1 else "unknown")
        k = kinds.setdefault(kind, {"n": 0, "correct": 0})
        k["n"] += 1
        k["correct"] += predicted_first_error(by_id[t["id"]], threshold) == t["gold_first_error"]
    result["error_kinds"] = {k: {"acc": v["correct"] / v["n"], "n": v["n"]} for k, v in sorted(kinds.items())}
    result["n"] = len(trajectories)
    result.update(report)
    result["eval_set"] = eval_set_id(pool, split, [t["id"] for t in trajectories])
    result["calibration"] = step_calibration(records, by_id)  # the run's reliability diagram (tasks/plots.py)
    return result


# -- stages (thin Prefect wrappers used by the flows) --------------------------------------------
def evaluate_pool(duckdb_path: str | Path, pool: str, model_dir_or_uri: str | Path, *, split: str = "eval",
                  batch_size: int = 32, max_length: int | None = 512, threshold: float = DEFAULT_THRESHOLD,
                  allow_truncation: bool = True) -> dict:
    """Load a model (folder or models:/ URI) and evaluate it on a pool's held-out split (`max_length` None: the
    backbone's whole context). Steps past `max_length` are counted in `truncated_steps`; with
    `allow_truncation=False` any such step is an error. The loop allows them (its gate compares F1s measured
    alike) and logs the count."""
    from actprm.store import Store
    from tasks.model_source import load_model
    from models.inference import inference_max_length

    model, tokenizer, version = load_model(model_dir_or_uri, device=_device())
    max_length = inference_max_length(model, max_length)
    with Store(duckdb_path) as store:
        store.require_pool(pool)
        result = evaluate_on_store(store, pool, model, tokenizer, split, batch_size=batch_size,
                                   max_length=max_length, threshold=threshold, allow_truncation=allow_truncation)
    return {"benchmark": "pool", "pool": pool, "split": split, "model": str(model_dir_or_uri),
            "model_version": version, **result}


def _log_evaluation(run_id: str | None, result: dict, tracking_uri: str | None = None, prefix: str = "eval") -> None:
    """Headline numbers as metrics of the MLflow run, the full result as evaluation.json."""
    from mlflow.tracking import MlflowClient

    if run_id is None:
        return
    client = MlflowClient(tracking_uri)
    metrics = {f"{prefix}_{k}": v for k, v in result.items()
               if k in ("f1", "f1_tuned", "prmscore", "f1_negative", "truncated_steps")}
    for name, sub in result.get("subsets", {}).items():
        metrics.update({f"{prefix}_{name}_{k}": v for k, v in sub.items() if k != "n" and v is not None})
    for kind, v in result.get("error_kinds", {}).items():
        metrics[f"{prefix}_acc_{kind}"] = v["acc"]
    for name, v in result.get("categories", {}).items():
        metrics[f"{prefix}_{name}_prmscore"] = v["prmscore"]
    for key, value in metrics.items():
        # Metric names allow alphanumerics, _ - . / and spaces; error kinds come from user data.
        client.log_metric(run_id, re.sub(r"[^\w\-. /]", "_", key), float(value))
    client.log_dict(run_id, result, "evaluation.json")


@dataclass
class Evaluation:
    """A trained model's F1 on its pool's held-out split: what the promotion gate compares (tasks/register.py)."""
    f1: float
    pool: str | None = None
    split: str = "eval"
    eval_set: str | None = None  # names the trajectories measured on: F1s are compared only on the same set
    result: dict[str, Any] = field(default_factory=dict)  # everything evaluate_pool measured (evaluation.json)

    def as_dict(self) -> dict[str, Any]:
        return {**self.result, "f1": self.f1}


def evaluate_round(settings, pool: str, model_dir: str, run_id: str | None = None) -> Evaluation:
    """Loop stage: ProcessBench-style F1 of a freshly trained model on the pool's held-out split."""
    result = evaluate_pool(settings.duckdb_path, pool, model_dir, batch_size=settings.uncertainty.batch_size,
                           max_length=settings.model.max_length)
    _log_evaluation(run_id, result, settings.tracking_uri)
    stage_logger().info("evaluate %s: F1 %.4f on %s (n=%d)", pool, result["f1"], result["eval_set"], result["n"])
    return Evaluation(f1=result["f1"], pool=result["pool"], split=result["split"], eval_set=result["eval_set"],
                      result=result)


def evaluate_request(settings, *, model: str | None = None, data: str | None = None,
                     predictions: str | None = None, pool: str | None = None, dev_data: str | None = None,
                     benchmark: str | None = None, allow_truncation: bool = False,
                     max_length: int | None = None) -> dict:
    """`actprm evaluate`: a predictions file, or a model (default: the champion) on a file or a pool.

    With `dev_data` the ProcessBench threshold is tuned on that file instead of fixed at 0.5. With `benchmark`,
    `data` must hold that benchmark's records (checked before any model loads). A model is scored at `max_length`
    (default: its backbone's whole context) and refuses to report a metric with steps left unscored unless
    `allow_truncation`.
    """
    from actprm.tracking import configure_mlflow, start_run
    from tasks.champion import champion_version

    configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    name = settings.registry.model_name
    if benchmark is not None:
        if benchmark not in BENCHMARKS:
            raise ActPRMError(f"unknown benchmark {benchmark!r}; choose one of: {', '.join(BENCHMARKS)}")
        if data is None:
            raise ActPRMError("--benchmark names the benchmark of --data; give --data DIR_OR_FILE")
        found = read_eval_set(data)[0]
        if found != benchmark:
            raise ActPRMError(f"{data}: holds {found} records, not {benchmark}")
    if predictions is not None:
        if data is None:
            raise ActPRMError("predictions need data: the benchmark file the predictions are for")
        result = evaluate_predictions(data, predictions, dev_data_path=dev_data)
        result["predictions"] = str(predictions)
    else:
        if data is None and pool is None:
            raise ActPRMError("give data (a ProcessBench/PRMBench JSONL file) or a pool to evaluate on")
        if dev_data is not None and data is None:
            raise ActPRMError("dev_data tunes the threshold for data; a pool's evaluation reports f1_tuned itself")
        if model is None:
            if champion_version(name) is None:
                raise ActPRMError(f"{name} has no champion yet: give a model (a models:/ URI or a folder), "
                                  "or run active learning first")
            model = f"models:/{name}@champion"
        sizes = {"batch_size": settings.uncertainty.batch_size, "max_length": max_length,
                 "allow_truncation": allow_truncation}
        result = (evaluate_pool(settings.duckdb_path, pool, model, **sizes) if pool is not None
                  else evaluate_model(model, data, dev_data_path=dev_data, **sizes))
    if data is not None:
        result["data"] = str(data)
    with start_run("evaluate", {"actprm.stage": "evaluate", "actprm.benchmark": result["benchmark"]}) as run:
        _log_evaluation(run.info.run_id, result, settings.tracking_uri)
        result["mlflow_run_id"] = run.info.run_id
    report_evaluation(result)
    return result


def evaluation_line(result: dict) -> str:
    """One line: what was measured, on which set, and the headline number."""
    where = result.get("eval_set") or result.get("data") or result.get("pool") or result["benchmark"]
    what = str(result.get("model") or result.get("predictions"))
    if result.get("model_version") is not None:
        what += f" (v{result['model_version']})"
    numbers = ", ".join(f"{k} {result[k]:.4f}" for k in ("f1", "f1_tuned", "prmscore") if result.get(k) is not None)
    return f"evaluated {what} on {where} (n={result.get('n', '?')}): {numbers or 'no headline metric'}"


def report_evaluation(result: dict) -> None:
    """The result where a Prefect user looks for it: a line in the run's log and a markdown artifact (key
    `evaluation-<set>`, versioned across runs), besides the MLflow run. Outside a flow run: the module log only."""
    from prefect.context import FlowRunContext, TaskRunContext

    line = evaluation_line(result)
    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        log.info(line)
        return
    from prefect.artifacts import create_markdown_artifact
    from prefect.logging import get_run_logger

    get_run_logger().info(line)
    rows = [(k, result[k]) for k in ("benchmark", "pool", "split", "eval_set", "data", "model", "model_version",
                                     "n", "f1", "f1_tuned", "prmscore", "mlflow_run_id") if result.get(k) is not None]
    markdown = "\n".join(["# Evaluation", "", line, "", "| | |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in rows])
    name = str(result.get("pool") or result["benchmark"]).lower()
    key = "evaluation-" + re.sub(r"[^a-z0-9-]", "-", name)
    create_markdown_artifact(markdown=markdown, key=key, description=line)
