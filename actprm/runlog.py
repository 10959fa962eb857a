"""Domain log lines where the user follows a run: Prefect's run logger inside a flow or task run (the lines show in
the flow run's Logs tab and `prefect flow-run logs`), the `actprm` logger elsewhere (the CLI, tests)."""

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
