"""The README's "Using it" commands, run exactly as written, in order, against a real `devart up`."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import asyncpg

from tests.support.up import devart_up

ROOT = Path(__file__).resolve().parents[2]


def using_it_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Using it", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the README's Using it section has no sh block"
    return [line for line in block[1].splitlines() if line.strip()]


async def test_readme_quick_start(tmp_path: Path, database_url: str, amqp_url: str, db: asyncpg.Pool,
                                  _broker_prefixes: set[str]) -> None:
    commands = using_it_commands()
    assert commands[0].startswith("export DEVART_TOKEN=") and commands[-1].startswith(".venv/bin/devart down")
    # Another directory than the repository, with the `.venv/bin` the commands name: DEVART_HOME, not the
    # current directory, decides which installation a command talks to.
    workdir = tmp_path / "elsewhere"
    (workdir / ".venv").mkdir(parents=True)
    (workdir / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
    script = "set -euo pipefail\n" + "".join(f"{line}\necho '::done {i}' >&2\n" for i, line in enumerate(commands))

    async with devart_up(tmp_path / "home", database_url, amqp_url, _broker_prefixes) as up:
        async def agent() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM agents WHERE state = 'active'"))

        from tests.support.system import wait_for

        await wait_for(agent, timeout_s=60, what="the shell agent to say hello")
        shell = await asyncio.create_subprocess_exec(
            "bash", "-c", script, cwd=workdir, env=up.env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(shell.communicate(), timeout=100)
        output = out.decode() + err.decode()
        assert shell.returncode == 0, output
        assert all(f"::done {i}" in output for i in range(len(commands))), output
        assert "hello from a sandbox" in output
        assert await asyncio.wait_for(up.process.wait(), timeout=60) == 0  # `devart down` stopped it
    assert await db.fetchval("SELECT status FROM tasks") == "succeeded"
