"""Processes by id, from /proc: whether one lives (for pid files and for the pid in a stage table's name), its
start time, and the processes below it or in its group or session (for `make stop`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # someone else's process
        return True
    # A zombie child still answers kill(0); treat it as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return True


class Proc(NamedTuple):
    pid: int
    ppid: int
    group: int      # process group id
    session: int    # session id
    started: int    # start time, clock ticks after boot: with the pid, names one process for good


def _stat(pid: int) -> Proc | None:
    """The process's ids and start time from /proc/<pid>/stat; None when it is gone (or there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # proc(5) fields 4-6 and 22, counted here from field 3 (the state), after "pid (comm)"
    return Proc(pid, int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))


def _all() -> list[Proc]:
    try:
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    except OSError:
        return []
    return [proc for proc in map(_stat, pids) if proc is not None]


def start_time(pid: int) -> int | None:
    proc = _stat(pid)
    return None if proc is None else proc.started


def descendants(pid: int) -> list[Proc]:
    """Every live process below `pid`, whatever session or group it put itself in (Prefect's process worker
    starts each flow run in a session of its own). Empty where there is no /proc."""
    children: dict[int, list[Proc]] = {}
    for proc in _all():
        children.setdefault(proc.ppid, []).append(proc)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def members(groups: set[int], sessions: set[int]) -> list[Proc]:
    """Live processes in any of `groups` or `sessions` now, including ones started since an earlier look (a
    group or session id is not given out again while it has a member)."""
    return [p for p in _all() if (p.group in groups or p.session in sessions) and pid_alive(p.pid)]
