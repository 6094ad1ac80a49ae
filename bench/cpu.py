"""CPU time of processes from ``/proc`` (Linux), to say what one task costs in each process."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces; everything after its closing paren is space-separated
    return raw[raw.rindex(")") + 2:].split()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) * _TICK_S if fields else 0.0


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (e.g. the backends of a postmaster)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def pids_by_command(fragment: str) -> list[int]:
    """Processes whose command line contains ``fragment``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fragment in command:
                found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU seconds used by named groups of processes between :meth:`start` and :meth:`stop`.

    A group is a function listing its pids, asked again at the stop, so processes started in
    between (a pool opening another database connection) are counted from their start.
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self._groups = groups
        self._before: dict[int, float] = {}
        self.used_s: dict[str, float] = {}

    def start(self) -> None:
        self._before = {pid: cpu_s(pid) for list_pids in self._groups.values() for pid in list_pids()}

    def stop(self) -> None:
        self.used_s = {
            name: sum(cpu_s(pid) - self._before.get(pid, 0.0) for pid in list_pids())
            for name, list_pids in self._groups.items()
        }
