"""Prefect flow: ingest a trajectory pool. It only wires the stages of `tasks.ingest` / `tasks.validate`:

read/stage -> quarantine -> dedupe/insert -> validate -> report -> register/emit

Each task opens the DuckDB store for its own step and closes it (one process at a time holds the file);
the staged lines live in a stage table between the tasks and are dropped at the end, even on failure.
"""

from __future__ import annotations

import os
import time
from typing import Annotated

from prefect import flow, task
from pydantic import Field

from actprm.config import load_settings, runtime_environment
from actprm.formats import FORMATS
from actprm.names import POOL_NAME_PATTERN, check_pool_name
from actprm.runlog import stage_logger
from actprm.store import Store
from tasks import ingest as ing
from tasks import validate as val


@task(name="stage-lines")
def stage_lines(db: str, paths: list[str], format: str | None, limits: ing.IngestLimits, tmp_dir: str) -> dict:
    t0 = time.perf_counter()
    files = ing.resolve_inputs(paths)
    fmt = ing.resolve_format(files, format)
    digest = ing.content_hash(files)
    with Store(db) as store:
        stage_name = ing.stage(store, files, fmt, limits, tmp_dir=tmp_dir)
    return {"stage": stage_name, "format": fmt.name, "files": files, "digest": digest,
            "seconds": time.perf_counter() - t0}


@task(name="quarantine")
def quarantine_lines(db: str, staged: dict, pool: str) -> ing.IngestSummary:
    summary = ing.IngestSummary(pool=pool, format=staged["format"], files=[f.path for f in staged["files"]],
                                seconds={"stage": staged["seconds"]})
    with ing.timed(summary, "quarantine"), Store(db) as store:
        return ing.quarantine(store, staged["stage"], pool, FORMATS.get(staged["format"]), staged["files"],
                              staged["digest"], summary)


@task(name="dedupe-insert")
def insert_trajectories(db: str, staged: dict, summary: ing.IngestSummary) -> ing.IngestSummary:
    with ing.timed(summary, "dedupe"), Store(db) as store:
        return ing.insert(store, staged["stage"], summary.pool, FORMATS.get(staged["format"]), summary)


@task(name="validate")
def validate_contract(db: str, pool: str, limits: ing.IngestLimits, shard_rows: int, reports_dir: str) -> val.ValidationResult:
    with Store(db) as store:
        return val.validate_pool(store, pool, limits=limits, shard_rows=shard_rows, reports_dir=reports_dir)


@task(name="register")
def register_pool(db: str, summary: ing.IngestSummary, result: val.ValidationResult,
                  tracking: ing.Tracking | None = None) -> ing.IngestSummary:
    with ing.timed(summary, "report"):
        with Store(db) as store:
            ing.finish(store, summary, result)
            sample = store.quarantine_sample(summary.pool, 20)
        ing.report_ingest(summary, emit=True, quarantine_sample=sample, tracking=tracking)
    stage_logger().info("ingest %s: %s, %d lines read, %d accepted, %d quarantined, %d duplicates, %d trajectories "
                        "added (pool now %d)", summary.pool, summary.status, summary.lines_read, summary.accepted,
                        summary.quarantined, summary.duplicates, summary.trajectories_added, summary.pool_trajectories)
    return summary


@task(name="drop-stage")
def drop_stage(db: str, stage_name: str) -> None:
    with Store(db) as store:
        store.drop_stage(stage_name)


@flow(name="ingest-pool")
def ingest_pool(paths: list[str], pool: Annotated[str, Field(pattern=POOL_NAME_PATTERN)], format: str | None = None,
                home: str | None = None) -> dict:
    """Ingest a data pool into DuckDB, validate it against its data contract and report on it.

    Fails (after marking the pool `rejected`) when a critical expectation fails; on success emits
    the event `actprm.pool.registered`, which starts the active-learning deployment.

    Args:
        paths: Files, globs or directories to read (JSONL, .jsonl.gz, .jsonl.zst, Parquet).
        pool: Name of the pool to create or extend: 1-64 ASCII letters, digits, '.', '_' or '-'.
        format: Input format (processbench, prmbench, math_shepherd, trl_stepwise, actprm, unlabeled); auto-detected when empty.
        home: Work dir holding the DuckDB file and reports (default: ACTPRM_HOME).
    """
    started = time.perf_counter()
    check_pool_name(pool)  # the schema's pattern shows in the UI; this refuses in one line whoever calls
    settings = load_settings({"home": home} if home else None)
    for k, v in runtime_environment(settings).items():
        os.environ.setdefault(k, v)
    db, cfg = str(settings.duckdb_path), settings.ingest
    limits = ing.IngestLimits.from_settings(settings)
    staged = stage_lines(db, paths, format, limits, str(settings.tmp_dir))
    try:
        summary = quarantine_lines(db, staged, pool)
        summary = insert_trajectories(db, staged, summary)
    finally:
        drop_stage(db, staged["stage"])
    t0 = time.perf_counter()
    result = validate_contract(db, pool, limits, cfg.validate_shard_rows, str(settings.reports_dir))
    summary.seconds["validate"] = time.perf_counter() - t0
    summary = register_pool(db, summary, result, ing.tracking_of(settings))
    summary.seconds["total"] = time.perf_counter() - started
    ing.raise_if_rejected(summary)
    return summary.as_dict()
