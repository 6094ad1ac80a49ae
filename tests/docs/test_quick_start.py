"""The README's "Using it" commands, run exactly as written, in order, against a real `devart up`."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import asyncpg

from tests.support.system import wait_for
from tests.support.up import devart_up

ROOT = Path(__file__).resolve().parents[2]


def sh_block(heading: str) -> list[str]:
    """The lines of the first ``sh`` block under the README's ``## heading``."""
    section = (ROOT / "README.md").read_text().split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, f"the README's {heading} section has no sh block"
    return [line for line in block[1].splitlines() if line.strip()]


def _elsewhere(tmp_path: Path) -> Path:
    """Another directory than the repository, with the `.venv/bin` the commands name: DEVART_HOME, not
    the current directory, decides which installation a command talks to."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(Path(sys.executable).parent.parent)
    return workdir


async def _agents(db: asyncpg.Pool, n: int = 1) -> bool:
    return await db.fetchval("SELECT count(*) FROM agents WHERE state = 'active'") >= n


async def test_readme_quick_start(tmp_path: Path, database_url: str, amqp_url: str, db: asyncpg.Pool,
                                  _broker_prefixes: set[str]) -> None:
    commands = sh_block("Using it")
    assert commands[0].startswith("export DEVART_TOKEN=") and commands[-1].startswith(".venv/bin/devart down")
    workdir = _elsewhere(tmp_path)
    script = "set -euo pipefail\n" + "".join(f"{line}\necho '::done {i}' >&2\n" for i, line in enumerate(commands))

    async with devart_up(tmp_path / "home", database_url, amqp_url, _broker_prefixes) as up:
        await wait_for(lambda: _agents(db), timeout_s=60, what="the shell agent to say hello")
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


async def test_readme_own_agent_commands(tmp_path: Path, database_url: str, amqp_url: str, db: asyncpg.Pool,
                                         _broker_prefixes: set[str]) -> None:
    """"Write your own agent": its commands as written (the agent in the background), against `devart up`."""
    setup, token, agent, submit = sh_block("Write your own agent")
    assert agent == ".venv/bin/python -m agents.examples.hello"
    workdir = _elsewhere(tmp_path)
    admin = "export DEVART_TOKEN=\"$(.venv/bin/devart token create --name me --role admin)\""
    script = "\n".join(["set -euo pipefail", setup, token, admin, f"{agent} >agent.log 2>&1 & AGENT=$!", submit,
                        "kill -TERM $AGENT", "wait $AGENT"])
    async with devart_up(tmp_path / "home", database_url, amqp_url, _broker_prefixes) as up:
        await wait_for(lambda: _agents(db), timeout_s=60, what="the shell agent to say hello")
        shell = await asyncio.create_subprocess_exec(
            "bash", "-c", script, cwd=workdir, env=up.env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(shell.communicate(), timeout=60)
        except TimeoutError:
            shell.kill()
            raise AssertionError((workdir / "agent.log").read_text()) from None
        assert shell.returncode == 0, out.decode() + err.decode() + (workdir / "agent.log").read_text()
        assert "hello, Ada (1/1)" in out.decode()

        async def traced() -> bool:  # its spans reached the built-in receiver with the agent token
            return bool(await db.fetchval("SELECT count(*) FROM spans WHERE service = 'devart-agent-hello'"))

        await wait_for(traced, timeout_s=30, what="the example agent's spans")
