"""User-facing errors: one line, no traceback (the CLI prints `error: <message>`)."""


class ActPRMError(Exception):
    """A problem the user can act on; its message is a single line."""


class BudgetExhausted(ActPRMError):
    """The judge budget is spent; everything bought so far is kept."""


class JudgeDown(ActPRMError):
    """Labeling stopped for the judge's health (circuit open, every request failed, the run's deadline passed):
    every label bought is kept, and the command exits non-zero so a script can tell it from "done"."""


class CircuitOpen(JudgeDown):
    """Too many consecutive failed judge requests; the run stopped, keeping every label bought."""


class UnknownPool(ActPRMError):
    """A command named a pool that was never ingested."""
