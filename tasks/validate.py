"""Validate: run the pool's data contract (data_contracts/) over every row, in shards, and build Data Docs.

Great Expectations has no DuckDB datasource, so the store exports the pool's per-trajectory facts as
pandas batches. Shards are cut by a hash of the trajectory id: equal ids always meet in one shard, so
per-shard uniqueness is pool-wide uniqueness, and every shard is a random sample for the mean checks.
The facts are computed in one scan of the pool (a temp table, each row tagged with its shard), not one scan
per shard, and Data Docs are rendered once after the last shard rather than after each.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from actprm.names import check_pool_name
from actprm.store import Store
from tasks.data_docs import make_offline

log = logging.getLogger(__name__)


@dataclass
class ValidationResult:
    failures: list[str] = field(default_factory=list)   # critical: the pool is rejected
    warnings: list[str] = field(default_factory=list)
    rows: int = 0                                       # rows the suites ran on (every row of the pool)
    shards: int = 0
    report: str | None = None                           # Data Docs index.html


def _describe(res) -> str:
    cfg = res.expectation_config
    kw = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "column_set", "result_format")}
    detail = res.result or {}
    seen = detail.get("unexpected_count", detail.get("observed_value"))
    return f"{cfg.type}({', '.join(f'{k}={v}' for k, v in kw.items())}): observed {seen}"


def _vectorisable(frame):
    """`frame` with its integer columns as int64 (float64 where they hold nulls): GX compares a column with its
    bounds vectorised only for those dtypes (ColumnValuesBetween._pandas: `column.dtype in [int, float]`), and
    DuckDB's INTEGER arrives as int32 (or pandas' nullable Int32), checked one Python call per row. Values are
    small counts and indices, exact in either type; a null stays a null (NaN) that the checks skip as before."""
    import numpy as np
    from pandas.api.types import is_integer_dtype

    casts = {c: "int64" if isinstance(t, np.dtype) else "float64"
             for c, t in frame.dtypes.items() if is_integer_dtype(t) and t != np.int64}
    return frame.astype(casts) if casts else frame


@contextlib.contextmanager
def _no_batch_fingerprint():
    """GX fingerprints every pandas batch smaller than its HASH_THRESHOLD (pd.util.hash_pandas_object + md5 of the
    whole frame, once per suite: ~0.5 CPU-s per 200k-row shard) only to tag the batch in its results; the facts
    here are exported afresh for each run, so the tag identifies nothing. Off while the shards run."""
    from great_expectations.execution_engine import pandas_execution_engine as engine

    threshold = getattr(engine, "HASH_THRESHOLD", 1e9)
    engine.HASH_THRESHOLD = 0
    try:
        yield
    finally:
        engine.HASH_THRESHOLD = threshold


@dataclass
class PoolFacts:
    """What the contract needs from the store, read up front so the suites (Python, holding the GIL) can run in
    a thread on their own while the store writes (DuckDB releases it): see `tasks.ingest.ingest`."""

    trajectories: int
    labeled_fraction: float
    reference: object            # data_contracts.trajectories.Reference
    shards: list                 # pandas frames, one per shard of the pool's facts


def reference_of(store: Store, pool: str):
    """The drift reference: what the registered pools other than `pool` look like now."""
    from data_contracts.trajectories import Reference

    earlier = store.registered_pools(exclude=pool)
    ref = Reference()
    if earlier:
        ref_stats = [store.pool_label_stats(p) for p in earlier]
        sized = [s for s in ref_stats if s["trajectories"]]
        n = sum(s["trajectories"] for s in sized)
        if n:
            ref_mean = sum(s["mean_steps"] * s["trajectories"] for s in sized) / n
            labeled = [s for s in sized if s["error_rate"] is not None]
            lab_n = sum(s["trajectories"] * s["labeled_fraction"] for s in labeled)
            err = (sum(s["error_rate"] * s["trajectories"] * s["labeled_fraction"] for s in labeled) / lab_n
                   if lab_n else None)
            ref = Reference(mean_steps=ref_mean, error_rate=err, pools=tuple(earlier))
    return ref


def pool_facts(store: Store, pool: str, *, shard_rows: int = 200_000, stage: str | None = None) -> PoolFacts:
    """Reads `pool`'s facts, shard by shard (`Store.pool_validation_facts`). `stage`: the pool as inserting that
    ingest stage will leave it, read before the insert."""
    size = store.pool_size_after_stage(pool, stage) if stage is not None else store.pool_label_stats(pool)["trajectories"]
    shards = max(1, math.ceil(size / max(1, shard_rows)))
    facts = store.pool_validation_facts(pool, shards, stage=stage)
    try:
        frames = [store.validation_shard(facts, shard) for shard in range(shards)]
    finally:
        store.drop_stage(facts)
    n = sum(len(f) for f in frames)
    labeled = sum(int(f["labeled"].sum()) for f in frames)
    return PoolFacts(n, labeled / n if n else 0.0, reference_of(store, pool), frames)


def validate_pool(store: Store, pool: str, *, limits, shard_rows: int = 200_000, reports_dir: str | Path | None = None,
                  drift_tolerance: float = 0.5) -> ValidationResult:
    """Checks every trajectory of `pool` against the critical and warning suites; builds Data Docs under
    `reports_dir/<pool>/` when given. `limits` has max_question_chars, max_steps, max_step_chars."""
    return run_contract(pool_facts(store, pool, shard_rows=shard_rows), pool, limits=limits, reports_dir=reports_dir,
                        drift_tolerance=drift_tolerance)


def run_contract(facts: PoolFacts, pool: str, *, limits, reports_dir: str | Path | None = None,
                 drift_tolerance: float = 0.5) -> ValidationResult:
    """The suites over every shard of `facts`, then Data Docs; touches no store (safe in a thread)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    from data_contracts.trajectories import ContractLimits, critical_suite, warning_suite

    ref = facts.reference
    out = ValidationResult()
    out.shards = len(facts.shards)

    if reports_dir is not None:
        root = Path(reports_dir) / check_pool_name(pool)  # Great Expectations writes under it
        root.mkdir(parents=True, exist_ok=True)
        context = gx.get_context(mode="file", project_root_dir=str(root))
    else:
        context = gx.get_context(mode="ephemeral")
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    lim = ContractLimits(limits.max_question_chars, limits.max_steps, limits.max_step_chars)
    suites = {
        "critical": context.suites.add_or_update(critical_suite(f"{pool}.critical", lim)),
        "warning": context.suites.add_or_update(
            warning_suite(f"{pool}.warning", ref, facts.labeled_fraction > 0, drift_tolerance)),
    }
    source = context.data_sources.add_or_update_pandas(name=f"actprm-{pool}")
    asset = next((a for a in source.assets if a.name == "trajectories"), None) or source.add_dataframe_asset("trajectories")
    batch_def = next((b for b in asset.batch_definitions if b.name == "shard"), None) or \
        asset.add_batch_definition_whole_dataframe("shard")
    definitions = [context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=f"{pool}.{level}", data=batch_def, suite=suite)) for level, suite in suites.items()]
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(name=f"{pool}.contract", validation_definitions=definitions, actions=[],
                      result_format={"result_format": "SUMMARY"}))
    failures: dict[str, str] = {}
    warnings: dict[str, str] = {}
    if not facts.trajectories:
        failures["empty"] = "the pool holds no trajectory: expect_table_row_count_to_be_between(min_value=1): observed 0"
    with _no_batch_fingerprint():
        for shard, frame in enumerate(facts.shards):
            if frame.empty:  # rows go to shards by id hash: a shard of a small pool may get none
                continue
            out.rows += len(frame)
            frame = _vectorisable(frame)
            result = checkpoint.run(batch_parameters={"dataframe": frame})
            for run in result.run_results.values():
                level = "critical" if run.suite_name.endswith(".critical") else "warning"
                for res in run.results:
                    if not res.success:
                        key = res.expectation_config.type + str(sorted(res.expectation_config.kwargs.items(), key=str))
                        (failures if level == "critical" else warnings).setdefault(key, f"shard {shard}: {_describe(res)}")
    out.failures, out.warnings = list(failures.values()), list(warnings.values())
    if reports_dir is not None:
        context.build_data_docs()  # every shard's results, rendered once
        index = Path(reports_dir) / pool / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
        if index.exists():
            make_offline(index.parent)  # GX links its CSS/JS from CDNs: ship copies so the pages render offline
        out.report = str(index) if index.exists() else None
    for w in out.warnings:
        log.warning("pool %s: contract warning: %s", pool, w)
    return out
