"""The `actprm` command line, the top layer: it imports the flows, the study and the stages; nothing imports it.

`cli/main.py` holds the Typer app (`[project.scripts] actprm = "cli.main:main"`); `python -m cli` runs it too.
"""
