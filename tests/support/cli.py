"""The ``devart`` command line as a child process, as a user runs it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path


async def devart(*args: str, env: dict[str, str], home: Path, stdin: str = "") -> tuple[int, str, str]:
    """``devart <args>`` with ``home`` as DEVART_HOME, ``env`` on top of the test's environment minus
    its ``DEVART_*`` settings and ``DATABASE_URL`` (the command sees only what the test gives it), and
    ``stdin`` as its input; returns the exit code, stdout and stderr."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DEVART_") and k != "DATABASE_URL"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_plane.cli", *args, env=dict(base, DEVART_HOME=str(home), **env),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=90)
    return process.returncode or 0, out.decode(), err.decode()
