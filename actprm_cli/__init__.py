"""The `actprm` command line, the top layer: it imports the flows, the study and the stages; nothing imports it.

`actprm_cli/main.py` holds the Typer app (`[project.scripts] actprm = "actprm_cli.main:main"`); `python -m actprm_cli` runs it too.
"""
