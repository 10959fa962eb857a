"""The data contract of a trajectory pool, as Great Expectations 1.x suites.

Validated on pandas batches exported from DuckDB (one row per trajectory of the pool, facts only,
never the text): see `Store.pool_validation_facts` for the columns.

- `critical`: a failure rejects the pool (schema, nulls, id uniqueness, step count / length bounds,
  label range, an empty pool).
- `warning`: reported, never blocking (labeled-fraction and error-rate sanity, drift against the
  pools registered before).
"""

from __future__ import annotations

from dataclasses import dataclass

import great_expectations as gx
import great_expectations.expectations as gxe

COLUMNS = ["id", "question_null", "question_chars", "num_steps", "steps_len", "max_step_chars", "min_step_chars",
           "has_null_step", "first_error", "step_labels_len", "error_kind", "labeled", "is_error"]


@dataclass(frozen=True)
class ContractLimits:
    max_question_chars: int
    max_steps: int
    max_step_chars: int


@dataclass(frozen=True)
class Reference:
    """What earlier registered pools looked like (None: no earlier pool to compare with)."""

    mean_steps: float | None = None
    error_rate: float | None = None
    pools: tuple[str, ...] = ()


def critical_suite(name: str, limits: ContractLimits) -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(name=name)
    for e in [
        gxe.ExpectTableColumnsToMatchSet(column_set=COLUMNS, exact_match=True),
        # (An empty pool is rejected once by tasks.validate, not per shard: a hash shard of a valid pool may be empty.)
        gxe.ExpectColumnValuesToNotBeNull(column="id"),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeInSet(column="question_null", value_set=[False]),
        gxe.ExpectColumnValuesToBeBetween(column="question_chars", min_value=1, max_value=limits.max_question_chars),
        gxe.ExpectColumnValuesToNotBeNull(column="num_steps"),
        gxe.ExpectColumnValuesToBeBetween(column="num_steps", min_value=1, max_value=limits.max_steps),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="num_steps", column_B="steps_len"),
        gxe.ExpectColumnValuesToBeInSet(column="has_null_step", value_set=[False]),
        gxe.ExpectColumnValuesToBeBetween(column="max_step_chars", min_value=1, max_value=limits.max_step_chars),
        gxe.ExpectColumnValuesToBeBetween(column="min_step_chars", min_value=1),  # no empty step
        # first_error: 0-based index of the first wrong step, -1 = all correct (ProcessBench convention)
        gxe.ExpectColumnValuesToBeBetween(column="first_error", min_value=-1, max_value=limits.max_steps - 1),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="num_steps", column_B="first_error",
                                                     ignore_row_if="either_value_is_missing"),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="num_steps", column_B="step_labels_len", or_equal=True,
                                                     ignore_row_if="either_value_is_missing"),
    ]:
        suite.add_expectation(e)
    return suite


def warning_suite(name: str, ref: Reference, labeled_source: bool, drift_tolerance: float) -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(name=name)
    if labeled_source:
        # a labeled source should label (nearly) every trajectory, with both correct and wrong ones
        suite.add_expectation(gxe.ExpectColumnMeanToBeBetween(column="labeled", min_value=0.99))
        suite.add_expectation(gxe.ExpectColumnMeanToBeBetween(column="is_error", min_value=0.02, max_value=0.98))
    if ref.mean_steps is not None:
        lo, hi = ref.mean_steps * (1 - drift_tolerance), ref.mean_steps * (1 + drift_tolerance)
        suite.add_expectation(gxe.ExpectColumnMeanToBeBetween(column="num_steps", min_value=lo, max_value=hi))
    if ref.error_rate is not None and labeled_source:
        tol = drift_tolerance / 2  # absolute, on a rate in [0, 1]
        suite.add_expectation(gxe.ExpectColumnMeanToBeBetween(
            column="is_error", min_value=max(0.0, ref.error_rate - tol), max_value=min(1.0, ref.error_rate + tol)))
    return suite
