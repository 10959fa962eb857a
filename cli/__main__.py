"""`python -m cli`: the `actprm` command, for a checkout whose console script is not (re)installed."""

from cli.main import app

app(prog_name="actprm")
