"""Evaluate the champion (or any model, or a predictions file) on a fixed benchmark.

With no data, predictions or pool (the UI's quick Run, the weekly schedule) it evaluates on a fixed, named set
that always exists: the held-out split of the built-in `sample` pool (Settings.default_pool), ingested first when
missing, like the active-learning loop does.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from actprm.config import flow_settings
from flows import prefect_tasks as pt
from flows.ingest_pool import ingest_pool


@flow(name="evaluate-champion", log_prints=True)
def evaluate_champion(
    model: str | None = None,
    data: str | None = None,
    predictions: str | None = None,
    pool: str | None = None,
    config: dict[str, Any] | None = None,
    dev_data: str | None = None,
    benchmark: str | None = None,
    allow_truncation: bool = False,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Evaluate a PRM; the result goes to the run's log, a Prefect artifact and an MLflow run.

    Args:
        model: A models:/ URI (default models:/actprm-prm@champion) or a model folder.
        data: ProcessBench or PRMBench JSONL file to evaluate on.
        predictions: JSONL of {"id", "step_scores"} from any PRM, scored against `data` instead of a model.
        pool: Evaluate on this pool's held-out split instead of a file (default without data: the `sample` pool).
        config: Any other settings, as nested overrides.
        dev_data: ProcessBench JSONL to tune the step threshold on (with `data`); default threshold 0.5.
        benchmark: processbench or prmbench: `data` must be that benchmark (default: detected).
        allow_truncation: Report a metric even when steps past `max_length` were left unscored (they are counted).
        max_length: Token budget per trajectory (default: the backbone's whole context).
    """
    settings = flow_settings(config)
    if data is None and predictions is None and pool is None:
        pool = settings.default_pool
    if pool is not None and data is None:
        sample = pt.sample_pool_task(settings, pool)
        if sample is not None:
            ingest_pool(paths=[sample], pool=pool, home=str(settings.home))
        pt.eval_split_task(settings, pool)
    return pt.evaluate_request_task(settings, model=model, data=data, predictions=predictions, pool=pool,
                                    dev_data=dev_data, benchmark=benchmark, allow_truncation=allow_truncation,
                                    max_length=max_length)
