"""Domain log lines where the user follows a run: Prefect's run logger inside a flow or task run (the lines show in
the flow run's Logs tab and `prefect flow-run logs`), the `actprm` logger elsewhere (the CLI, tests); and progress
bars on the flow run (Prefect progress artifacts)."""

from __future__ import annotations

import logging
import sys

_FALLBACK = logging.getLogger("actprm")


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """The logger for one stage's line: what it read, bought, trained, scored or decided."""
    # Prefect is imported by every flow; outside one, importing it (seconds) just to log would be wasted.
    if "prefect" in sys.modules:
        from prefect.context import FlowRunContext, TaskRunContext

        if TaskRunContext.get() is not None or FlowRunContext.get() is not None:
            from prefect.logging import get_run_logger

            return get_run_logger()
    return _FALLBACK


class ProgressArtifact:
    """A Prefect progress artifact (0-100%) updated as work advances; a no-op outside a flow run."""

    def __init__(self, key: str, description: str):
        from actprm.tracking import prefect_flow_run_id  # mlflow, imported with it, is slow to import

        self.artifact_id = None
        if prefect_flow_run_id() is None:
            return
        from prefect.artifacts import create_progress_artifact

        key = "".join(c if c.isalnum() else "-" for c in key.lower())  # artifact keys: lowercase, dashes
        self.artifact_id = create_progress_artifact(progress=0.0, key=key, description=description)

    def update(self, done: int, total: int) -> None:
        if self.artifact_id is None:
            return
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self.artifact_id, progress=100.0 * done / max(total, 1))
