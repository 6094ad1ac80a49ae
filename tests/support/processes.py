"""Finding a sandboxed process from the host: inside its PID namespace it cannot tell its host pid,
so tests give it an argument no other process has (a ``sleep`` duration) and look for that."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie waiting for a reaper that is not us)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


def marker() -> str:
    """A ``sleep`` duration (seconds) no other process uses."""
    return f"300.{secrets.randbelow(10**9)}"


def running(mark: str) -> list[int]:
    """Host pids of live processes with ``mark`` as one of their arguments."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if mark.encode() in argv and not process_gone(int(entry.name)):
            found.append(int(entry.name))
    return found


async def wait_until_none_running(mark: str, within_s: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        if not running(mark):
            return True
        await asyncio.sleep(0.05)
    return not running(mark)


async def wait_until_running(mark: str, count: int, within_s: float = 30.0) -> list[int]:
    """The pids with ``mark`` once there are ``count`` of them, or those there are after ``within_s``."""
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        if len(found := running(mark)) >= count:
            return found
        await asyncio.sleep(0.05)
    return running(mark)
