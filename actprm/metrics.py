"""Benchmark metrics as pure functions of (records, step scores), checkable by hand: ProcessBench F1
(Zheng et al., 2024, arXiv 2412.06559) and PRMBench PRMScore (Song et al., 2025, arXiv 2501.03124).

Step scores are P(step is correct) in [0, 1]. A model may score fewer steps than a trajectory has
(steps cut by max_length); unscored steps are treated as the benchmarks' reference code treats a
missing label: the ProcessBench prediction is taken from the scored steps only, and PRMBench
counts only the scored steps (mr_eval iterates over the predicted labels).
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from actprm.errors import ActPRMError

# PRMBench (Song et al., 2025, arXiv 2501.03124) groups its nine error categories into three
# evaluation subjects (paper Sec. 3 / the leaderboard at prmbench.github.io). "redundency" is
# spelled as in the data.
PRMBENCH_GROUPS: dict[str, tuple[str, ...]] = {
    "simplicity": ("redundency", "circular"),
    "soundness": ("counterfactual", "step_contradiction", "domain_inconsistency", "confidence"),
    "sensitivity": ("missing_condition", "deception", "multi_solutions"),
}

DEFAULT_THRESHOLD = 0.5
# Thresholds tried when tuning on a dev split: a 0.01 grid over (0, 1).
THRESHOLD_GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))


# -- ProcessBench ----------------------------------------------------------------------------
def predicted_first_error(scores: Sequence[float], threshold: float = DEFAULT_THRESHOLD) -> int:
    """ProcessBench's PRM protocol: the first step scored below the threshold, else -1 (all correct)."""
    for i, s in enumerate(scores):
        if s < threshold:
            return i
    return -1


def require_scores(keys: list[str], step_scores: dict[str, Sequence[float]]) -> None:
    """Every record needs finite scores; a clear error names the first missing or broken ids."""
    missing = [k for k in keys if k not in step_scores]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5])
        raise ActPRMError(f"no step scores for {len(missing)} of {len(keys)} evaluation records "
                          f"(first missing ids: {shown})")
    broken = [k for k in keys if any(math.isnan(s) or math.isinf(s) for s in step_scores[k])]
    if broken:
        raise ActPRMError(f"step scores contain NaN or infinity for {len(broken)} records "
                          f"(first: {', '.join(repr(b) for b in broken[:5])})")


def _harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def processbench_metrics(
    records: list[dict],
    step_scores: dict[str, Sequence[float]],
    threshold: float = DEFAULT_THRESHOLD,
    threshold_source: str = "default",
) -> dict[str, Any]:
    """ProcessBench F1 (Zheng et al., 2024, arXiv 2412.06559).

    Per subset: acc_error = share of erroneous samples (label != -1) whose predicted first error
    equals the label; acc_correct = share of correct samples (label == -1) predicted -1;
    F1 = their harmonic mean. The reported F1 is the unweighted mean over subsets.
    A subset holding only one kind of sample (possible in a small held-out split) reports the other
    accuracy as None and uses the available accuracy as its F1.
    """
    return {**_processbench(records, step_scores, lambda _: threshold), "threshold": threshold,
            "threshold_source": threshold_source}


def _processbench(records: list[dict], step_scores: dict[str, Sequence[float]],
                  threshold_of: Callable[[dict], float]) -> dict[str, Any]:
    """ProcessBench F1 with each record predicted at its own threshold (`processbench_metrics`)."""
    _require_records(records, step_scores)
    by_subset: dict[str, dict[str, int]] = {}
    for rec in records:
        pred = predicted_first_error(step_scores[rec["id"]], threshold_of(rec))
        _count(by_subset, rec, pred == rec["label"])
    return _f1_of_counts(by_subset)


def _require_records(records: list[dict], step_scores: dict[str, Sequence[float]]) -> None:
    if not records:
        raise ActPRMError("no evaluation records: the evaluation set is empty")
    require_scores([r["id"] for r in records], step_scores)


def _count(by_subset: dict[str, dict[str, int]], rec: dict, hit: bool) -> None:
    c = by_subset.setdefault(rec.get("subset") or "default", {"err": 0, "err_hit": 0, "ok": 0, "ok_hit": 0})
    kind = "ok" if rec["label"] == -1 else "err"
    c[kind] += 1
    c[kind + "_hit"] += hit


def _f1_of_counts(by_subset: dict[str, dict[str, int]]) -> dict[str, Any]:
    subsets = {}
    for name, c in sorted(by_subset.items()):
        acc_error = c["err_hit"] / c["err"] if c["err"] else None
        acc_correct = c["ok_hit"] / c["ok"] if c["ok"] else None
        if acc_error is None or acc_correct is None:
            f1 = acc_error if acc_correct is None else acc_correct
        else:
            f1 = _harmonic_mean(acc_error, acc_correct)
        subsets[name] = {"acc_error": acc_error, "acc_correct": acc_correct, "f1": f1, "n": c["err"] + c["ok"]}
    return {"f1": sum(s["f1"] for s in subsets.values()) / len(subsets), "subsets": subsets}


def _hit_interval(scores: Sequence[float], label: int) -> tuple[float, float]:
    """(lo, hi) such that the record is predicted right at threshold t exactly when lo < t <= hi.

    `predicted_first_error` returns `label` when every earlier step scores >= t and step `label` scores < t,
    and -1 when every step scores >= t; so one pass over the scores answers every threshold of a grid.
    """
    if label == -1:
        return -math.inf, min(scores, default=math.inf)
    if label >= len(scores):  # the erroneous step was not scored: never predicted
        return math.inf, -math.inf
    return scores[label], min(scores[:label], default=math.inf)


def tune_threshold(records: list[dict], step_scores: dict[str, Sequence[float]],
                   grid: Sequence[float] = THRESHOLD_GRID) -> float:
    """The grid threshold with the best ProcessBench F1 on a dev split (ties: closest to 0.5).

    Each threshold's F1 is the one `processbench_metrics` gives (the same comparisons, counted from each
    record's `_hit_interval`), without re-reading every record's scores for every threshold.
    """
    _require_records(records, step_scores)
    intervals = [(rec, *_hit_interval(step_scores[rec["id"]], rec["label"])) for rec in records]

    def f1_at(t: float) -> float:
        by_subset: dict[str, dict[str, int]] = {}
        for rec, lo, hi in intervals:
            _count(by_subset, rec, lo < t <= hi)
        return _f1_of_counts(by_subset)["f1"]

    return float(max(grid, key=lambda t: (f1_at(t), -abs(t - 0.5))))


def processbench_tuned(test_records: list[dict], dev_records: list[dict],
                       step_scores: dict[str, Sequence[float]]) -> dict[str, Any]:
    """Tune the threshold on the dev records, then report test F1 at that threshold."""
    t = tune_threshold(dev_records, step_scores)
    out = processbench_metrics(test_records, step_scores, t, threshold_source="tuned")
    out["dev_f1"] = processbench_metrics(dev_records, step_scores, t)["f1"]
    return out


def fold_of(record_id: str, folds: int) -> int:
    """A record's cross-fitting fold: a hash of its id, so the split is the same for every model scored."""
    return int.from_bytes(hashlib.sha256(record_id.encode()).digest()[:8], "big") % folds


def processbench_crossfit(records: list[dict], step_scores: dict[str, Sequence[float]], folds: int = 2,
                          grid: Sequence[float] = THRESHOLD_GRID) -> dict[str, Any]:
    """ProcessBench F1 at a threshold tuned on held-out records, when there is no separate dev split.

    The reference code of the paper's pool-based experiment (sail-sg/ActivePRM,
    examples/py_scripts/pool_based_active_learning.py) picks the threshold with the best F1 on one ProcessBench
    subset and applies it to the others, because a PRM's scores are not calibrated at 0.5. Here the records are
    cut into `folds` folds by id (`fold_of`); each fold is predicted at the threshold tuned (`tune_threshold`)
    on the other folds, so no record is scored at a threshold chosen on itself, and F1 is computed over all
    records pooled.
    """
    if folds < 2:
        raise ActPRMError(f"cross-fitting needs at least 2 folds, got {folds}")
    fold = {r["id"]: fold_of(r["id"], folds) for r in records}
    thresholds = []
    for k in range(folds):
        dev = [r for r in records if fold[r["id"]] != k]
        thresholds.append(tune_threshold(dev, step_scores, grid) if dev else DEFAULT_THRESHOLD)
    out = _processbench(records, step_scores, lambda r: thresholds[fold[r["id"]]])
    return {**out, "threshold": statistics.fmean(thresholds), "thresholds": thresholds,
            "threshold_source": f"cross-fit ({folds} folds)"}


# -- PRMBench --------------------------------------------------------------------------------
def prmbench_key(record: dict) -> str:
    """PRMBench's `idx` repeats across its category files, so a record is keyed by both.

    The `<classification>_<idx>` form is the one mr_eval (the official toolkit) uses.
    """
    return f"{record['classification']}_{record['idx']}"


def _f1(tp: int, fp: int, fn: int) -> float:
    # F1 = 2TP / (2TP + FP + FN); 0 when undefined (mr_eval reports -1 there; 0 keeps means sane).
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


# Categories scored by F1 alone: every step of a multi_solutions process is correct (it solves the problem another
# way), so there is no error for F1_neg to find; mr_visualize's table script (get_prmscore_from_current_res_dict)
# scores them by F1, and 0.5 * F1 would cap a perfect PRM at 0.5 there.
F1_ONLY_CATEGORIES = frozenset({"multi_solutions"})


def _prm_score(c: dict[str, int], f1_only: bool = False) -> dict[str, Any]:
    # Correct steps are the positive class. F1_neg swaps the roles: TN are the true positives,
    # FN the false positives and FP the false negatives.
    f1 = _f1(c["tp"], c["fp"], c["fn"])
    f1_neg = _f1(c["tn"], c["fn"], c["fp"])
    return {"prmscore": f1 if f1_only else 0.5 * f1 + 0.5 * f1_neg, "f1": f1, "f1_negative": f1_neg, **c}


# mr_eval's name for the originals' classification: one all-correct sample per problem, keyed "correct_<idx>".
ORIGINALS = "correct"


def prmbench_metrics(records: list[dict], step_scores: dict[str, Sequence[float]]) -> dict[str, Any]:
    """PRMScore (Song et al., 2025): 0.5 * F1 + 0.5 * F1_neg over all steps of the modified processes.

    A step is predicted correct when its score > 0.5; TP/FP/TN/FN are micro-summed over steps with
    correct steps as positive (mr_eval `eval_on_hallucination_step`; the 0.5/0.5 weights are from
    mr_visualize's table script). Categories use their own step counts, and multi_solutions, which has no
    erroneous step, is scored by F1 alone (F1_ONLY_CATEGORIES, as that script does); a group's score is the
    unweighted mean of its categories' PRMScores (the leaderboard's per-subject overall).
    `error_steps` are 1-based; ones past the end of the process (present in the data) are ignored,
    as in mr_eval, which only visits the steps that have a prediction.
    Records of classification ORIGINALS (the unmodified solutions) are scored apart, as mr_eval does: their
    steps count in `originals` (F1 alone: every step is correct) and never in the total, a category or a group.
    """
    if not records:
        raise ActPRMError("no evaluation records: the evaluation set is empty")
    require_scores([prmbench_key(r) for r in records], step_scores)
    zero = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    total = dict(zero)
    per_cat: dict[str, dict[str, int]] = {}
    counts: dict[str, int] = {}
    for rec in records:
        cat = rec["classification"]
        c = per_cat.setdefault(cat, dict(zero))
        counts[cat] = counts.get(cat, 0) + 1
        wrong = {e - 1 for e in rec["error_steps"]}
        scores = step_scores[prmbench_key(rec)][: len(rec["modified_process"])]
        for i, s in enumerate(scores):
            predicted_correct = s > 0.5
            if i in wrong:
                cell = "fp" if predicted_correct else "tn"
            else:
                cell = "tp" if predicted_correct else "fn"
            c[cell] += 1
            if cat != ORIGINALS:
                total[cell] += 1
    originals = per_cat.pop(ORIGINALS, None)
    if not per_cat:
        raise ActPRMError("no modified processes to evaluate: PRMScore is defined on the modified processes")
    categories = {cat: {**_prm_score(c, cat in F1_ONLY_CATEGORIES), "n": counts[cat]}
                  for cat, c in sorted(per_cat.items())}
    groups = {}
    for group, cats in PRMBENCH_GROUPS.items():
        present = [categories[c]["prmscore"] for c in cats if c in categories]
        if present:
            groups[group] = {"prmscore": sum(present) / len(present),
                             "categories": [c for c in cats if c in categories]}
    overall = _prm_score(total)
    return {"prmscore": overall["prmscore"], "f1": overall["f1"], "f1_negative": overall["f1_negative"],
            "steps": sum(total.values()), "n": len(records) - counts.get(ORIGINALS, 0), "categories": categories,
            "groups": groups,
            "originals": None if originals is None else {**_prm_score(originals, True), "n": counts[ORIGINALS]}}


def step_calibration(records: list[dict], step_scores: dict[str, Sequence[float]], bins: int = 10) -> dict[str, Any]:
    """Reliability diagram data of step probabilities against the step labels a first_error implies (1 before it,
    0 at it, steps after it unlabeled; -1: every step correct), in `bins` equal-width bins of the probability:
    per bin its count, mean probability and share of correct steps, and the expected calibration error
    ECE = sum_b n_b/N * |acc_b - conf_b| (Naeini et al., 2015; Guo et al., 2017, eq. 3)."""
    counts, prob_sum, correct_sum = [0] * bins, [0.0] * bins, [0] * bins
    for rec in records:
        scores, label = step_scores[rec["id"]], int(rec["label"])
        labeled = scores if label < 0 else scores[:label + 1]
        for i, p in enumerate(labeled):
            b = min(int(p * bins), bins - 1)
            counts[b] += 1
            prob_sum[b] += p
            correct_sum[b] += int(label < 0 or i < label)
    total = sum(counts)
    rows = [{"lower": b / bins, "upper": (b + 1) / bins, "n": n,
             "mean_probability": prob_sum[b] / n if n else None, "correct_fraction": correct_sum[b] / n if n else None}
            for b, n in enumerate(counts)]
    ece = sum(r["n"] / total * abs(r["correct_fraction"] - r["mean_probability"]) for r in rows if r["n"]) if total else None
    return {"bins": rows, "steps": total, "ece": ece}
