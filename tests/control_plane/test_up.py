"""`devart up` and `devart down` as real processes: what runs, and what is left when they stop."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import asyncpg

from control_plane import runstate
from tests.support.system import wait_for
from tests.support.up import devart_up


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def _agent_pids(db: asyncpg.Pool, n: int) -> list[int] | None:
    rows = await db.fetch("SELECT pid FROM agents WHERE state = 'active'")
    return [r["pid"] for r in rows] if len(rows) == n else None


async def test_sigterm_stops_the_agents_and_revokes_their_token(
    tmp_path: Path, database_url: str, amqp_url: str, db: asyncpg.Pool, _broker_prefixes: set[str],
) -> None:
    async with devart_up(tmp_path / "home", database_url, amqp_url, _broker_prefixes, "--agents", "2") as up:
        pids = await wait_for(lambda: _agent_pids(db, 2), timeout_s=60, what="two agents to say hello")
        assert all(_alive(pid) for pid in pids)
        token = await db.fetchrow("SELECT name, revoked_at FROM api_tokens WHERE name LIKE 'devart-up-agents-%'")
        assert token["revoked_at"] is None

        up.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(up.process.wait(), timeout=60) == 0

    assert not any(_alive(pid) for pid in pids)
    assert await db.fetchval("SELECT revoked_at FROM api_tokens WHERE name = $1", token["name"]) is not None
    assert runstate.read(tmp_path / "home") is None
    states = await db.fetch("SELECT state FROM agents")
    assert {r["state"] for r in states} == {"gone"}  # they said bye


async def test_agents_die_with_a_killed_devart_up(
    tmp_path: Path, database_url: str, amqp_url: str, db: asyncpg.Pool, _broker_prefixes: set[str],
) -> None:
    async with devart_up(tmp_path / "home", database_url, amqp_url, _broker_prefixes) as up:
        pids = await wait_for(lambda: _agent_pids(db, 1), timeout_s=60, what="the agent to say hello")
        up.process.send_signal(signal.SIGKILL)
        await up.process.wait()

    async def gone() -> bool:
        return not any(_alive(pid) for pid in pids)

    await wait_for(gone, timeout_s=30, what="the agent to follow its parent")


async def test_down_stops_the_embedded_postgres() -> None:
    root = Path(tempfile.mkdtemp(prefix="devart-test-home-"))
    root.chmod(0o755)  # as root, pgserver runs Postgres as its own user, which must reach the data
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVART_") and k != "DATABASE_URL"}
    env["DEVART_HOME"] = str(root)
    try:
        migrate = await asyncio.create_subprocess_exec(sys.executable, "-m", "control_plane.cli", "migrate", env=env)
        assert await asyncio.wait_for(migrate.wait(), timeout=90) == 0
        pid = int((root / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0])
        assert _alive(pid)  # the embedded Postgres outlives the command that started it

        down = await asyncio.create_subprocess_exec(sys.executable, "-m", "control_plane.cli", "down", env=env,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(down.communicate(), timeout=90)
        assert down.returncode == 0 and f"stopped the embedded Postgres under {root}" in err.decode()
        assert not _alive(pid)
    finally:
        shutil.rmtree(root, ignore_errors=True)
