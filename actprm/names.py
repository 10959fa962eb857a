"""The one rule for names that become part of a file path (pool names: reports/<pool>/, data/<pool>-...).

A name is 1-64 characters of ASCII letters, digits, `.`, `_` and `-`, starting with a letter or digit: no
separator, no `..` component, no hidden file, nothing a shell or URL must quote. Every entry point (CLI,
flow parameters, the settings, the `actprm.pool.registered` event's payload through the flow it starts)
calls `check_pool_name` before anything touches the disk.
"""

from __future__ import annotations

import re

from actprm.errors import ActPRMError

POOL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class InvalidName(ActPRMError):
    """A name that would escape or garble the path it is put in."""


def check_pool_name(name: object) -> str:
    """`name` when it is a valid pool name; else InvalidName with a one-line reason."""
    if not isinstance(name, str) or not name:
        raise InvalidName("a pool name is required")
    # re's $ also matches before a final newline: fullmatch does not
    if not re.fullmatch(POOL_NAME_PATTERN[1:-1], name):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise InvalidName(f"invalid pool name {shown!r}: use 1-64 ASCII letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    return name
