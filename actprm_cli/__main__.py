"""`python -m actprm_cli`: the `actprm` command, for a checkout whose console script is not (re)installed."""

from actprm_cli.main import app

app(prog_name="actprm")
