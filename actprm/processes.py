"""Whether a process id names a live process: for pid files (the servers) and for the pid in a stage table's name
(an ingest killed between its tasks)."""

from __future__ import annotations

import os
from pathlib import Path


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


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) from /proc/<pid>/stat; None when the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])  # fields 4 and 22 of proc(5), counted after "pid (comm)"


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live process below `pid`, whatever session or group it put itself in (Prefect's
    process worker starts each flow run in a session of its own). Empty where there is no /proc."""
    try:
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    except OSError:
        return []
    children: dict[int, list[tuple[int, int]]] = {}
    for p in pids:
        stat = _stat(p)
        if stat is not None:
            children.setdefault(stat[0], []).append((p, stat[1]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def same_process(pid: int, started: int) -> bool:
    """Whether `pid` still names the process that started at `started` (not a pid the system gave out again)."""
    stat = _stat(pid)
    return stat is not None and stat[1] == started and pid_alive(pid)
