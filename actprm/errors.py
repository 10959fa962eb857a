"""User-facing errors: one line, no traceback (the CLI prints `error: <message>`)."""


class ActPRMError(Exception):
    """A problem the user can act on; its message is a single line."""


class BudgetExhausted(ActPRMError):
    """The judge budget is spent; everything bought so far is kept."""


class CircuitOpen(ActPRMError):
    """Too many consecutive judge failures; the run stopped, keeping every label bought."""


class UnknownPool(ActPRMError):
    """A command named a pool that was never ingested."""
