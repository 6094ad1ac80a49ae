"""The ``devart`` command line as a child process, as a user runs it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

LineSink = Callable[[str], Awaitable[None]]


async def devart(*args: str, env: dict[str, str], home: Path, stdin: str = "",
                 on_stderr: LineSink | None = None) -> tuple[int, str, str]:
    """``devart <args>`` with ``home`` as DEVART_HOME, ``env`` on top of the test's environment minus
    its ``DEVART_*`` settings and ``DATABASE_URL`` (the command sees only what the test gives it), and
    ``stdin`` as its input; returns the exit code, stdout and stderr. ``on_stderr`` hears each line of
    stderr as the command prints it, so a test can act while the command runs."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DEVART_") and k != "DATABASE_URL"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_plane.cli", *args, env=dict(base, DEVART_HOME=str(home), **env),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None

    async def feed() -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it exited without reading all
            process.stdin.write(stdin.encode())
            await process.stdin.drain()
        process.stdin.close()

    async def collect(stream: asyncio.StreamReader, sink: LineSink | None) -> str:
        lines = []
        async for line in stream:
            lines.append(line.decode())
            if sink is not None:
                await sink(lines[-1])
        return "".join(lines)

    async def run() -> tuple[str, str]:
        _, out, err = await asyncio.gather(feed(), collect(process.stdout, None), collect(process.stderr, on_stderr))
        await process.wait()
        return out, err

    try:
        out, err = await asyncio.wait_for(run(), timeout=90)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode or 0, out, err
