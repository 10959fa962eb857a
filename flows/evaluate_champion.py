"""Evaluate the champion (or any model, or a predictions file) on a fixed benchmark."""

from __future__ import annotations

from typing import Any

from prefect import flow

from actprm.config import flow_settings
from tasks.evaluate import evaluate_request_stage


@flow(name="evaluate-champion", log_prints=True)
def evaluate_champion(
    model: str | None = None,
    data: str | None = None,
    predictions: str | None = None,
    pool: str | None = None,
    config: dict[str, Any] | None = None,
    dev_data: str | None = None,
    allow_truncation: bool = False,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Evaluate a PRM.

    Args:
        model: A models:/ URI (default models:/actprm-prm@champion) or a model folder.
        data: ProcessBench or PRMBench JSONL file to evaluate on.
        predictions: JSONL of {"id", "step_scores"} from any PRM, scored against `data` instead of a model.
        pool: Evaluate on this pool's held-out split instead of a file.
        config: Any other settings, as nested overrides.
        dev_data: ProcessBench JSONL to tune the step threshold on (with `data`); default threshold 0.5.
        allow_truncation: Report a metric even when steps past `max_length` were left unscored (they are counted).
        max_length: Token budget per trajectory (default: the backbone's whole context).
    """
    settings = flow_settings(config)
    return evaluate_request_stage(settings, model=model, data=data, predictions=predictions, pool=pool,
                                  dev_data=dev_data, allow_truncation=allow_truncation, max_length=max_length)
