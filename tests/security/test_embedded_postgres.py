"""The embedded Postgres as another local user would attack it, and the production start-up refusals.

Before the lockdown, pgserver's cluster trusted every local connection as the superuser and, for a
DEVART_HOME path too long for a socket name, put the socket in a world-writable directory: any OS
user could connect and insert an admin API token.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from pydantic import SecretStr

from agents.sdk.settings import BrokerSettings
from control_plane.db import APP_ROLE, PASSWORDS_FILE, EmbeddedPostgres, migrate_database
from control_plane.service import ControlPlane
from tests.support.system import fast_settings

NOBODY = 65534


@pytest.fixture(params=["short", "long"])
def home(request: pytest.FixtureRequest) -> Iterator[Path]:
    # a long path makes pgserver put the socket in its own runtime directory, not in the data directory
    root = Path(tempfile.mkdtemp(prefix="devart-pg-"))
    root.chmod(0o755)  # as root, pgserver runs Postgres as its own user, which must reach the data
    home = root / ("h" if request.param == "short" else "a-home-path-long-enough-that-a-socket-name-under-it-" * 2)
    home.mkdir()
    home.chmod(0o755)
    yield home
    postmaster = home / "postgres" / "postmaster.pid"
    if postmaster.exists():
        pid = int(postmaster.read_text().split("\n", 1)[0])
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    shutil.rmtree(root, ignore_errors=True)


def _psql() -> str:
    import pgserver

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql")


async def test_another_os_user_cannot_reach_the_embedded_database(home: Path) -> None:
    database = await EmbeddedPostgres(home).start()
    await migrate_database(database.owner_url)
    parts = urlsplit(database.owner_url)
    socket_dir = parse_qs(parts.query)["host"][0]
    insert = ("INSERT INTO api_tokens (id, name, role, token_hash) "
              f"VALUES ('{uuid.uuid4()}', 'intruder', 'admin', 'x')")
    attack = await asyncio.create_subprocess_exec(
        "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", _psql(),
        f"host={socket_dir} user=postgres dbname=devart", "-c", insert,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": os.environ["PATH"]},
    )
    out, err = await asyncio.wait_for(attack.communicate(), timeout=60)
    assert attack.returncode != 0, out
    assert b"Permission denied" in err or b"password" in err, err
    # the socket and its directory belong to the server's OS user alone; the passwords to ours
    assert stat.S_IMODE(os.stat(socket_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home / PASSWORDS_FILE).st_mode) == 0o600
    # a process that can reach the socket (root here) still needs the password
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(f"postgresql://postgres@/devart?host={socket_dir}")
    conn = await asyncpg.connect(database.owner_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM api_tokens WHERE name = 'intruder'") == 0
        assert await conn.fetchval("SELECT count(*) FROM pg_hba_file_rules WHERE auth_method <> 'scram-sha-256'") == 0
    finally:
        await conn.close()


async def test_the_control_plane_on_the_embedded_database_connects_as_devart_app(
    home: Path, broker_settings: BrokerSettings
) -> None:
    settings = fast_settings("", broker_settings).model_copy(update={"database_url": None, "home": home})
    async with ControlPlane(settings, workers=False) as cp:
        async with cp.pool.acquire() as conn:
            role = await conn.fetchrow(
                "SELECT session_user AS login, current_user AS acting, rolsuper, rolbypassrls FROM pg_roles "
                "WHERE rolname = session_user")
        async with cp.loops_pool.acquire() as conn:
            loops = await conn.fetchval("SELECT current_user")
    assert (role["login"], role["acting"], role["rolsuper"], role["rolbypassrls"]) == (APP_ROLE, APP_ROLE, False, False)
    assert loops == "devart_service"


async def test_production_refuses_a_superuser(database_url: str, broker_settings: BrokerSettings) -> None:
    settings = fast_settings(database_url, broker_settings).model_copy(update={"environment": "production"})
    with pytest.raises(RuntimeError, match="as a superuser"):
        async with ControlPlane(settings, workers=False):
            pass


async def test_production_refuses_a_bypassrls_login(database_url: str, broker_settings: BrokerSettings) -> None:
    name = f"bypass_{uuid.uuid4().hex[:8]}"
    owner = await asyncpg.connect(database_url)
    await owner.execute(f"CREATE ROLE {name} LOGIN BYPASSRLS; GRANT devart_app, devart_service TO {name}; "
                        f"GRANT SELECT ON schema_migrations TO {name}; GRANT CREATE ON SCHEMA public TO {name}")
    parts = urlsplit(database_url)
    as_bypass = parts._replace(netloc=f"{name}@{parts.netloc.rpartition('@')[2]}").geturl()
    settings = fast_settings(as_bypass, broker_settings).model_copy(update={"environment": "production"})
    try:
        with pytest.raises(RuntimeError, match="as a BYPASSRLS role"):
            async with ControlPlane(settings, workers=False):
                pass
    finally:
        await owner.execute(f"REVOKE ALL ON schema_migrations FROM {name}; REVOKE CREATE ON SCHEMA public FROM {name}; "
                            f"DROP ROLE {name}")
        await owner.close()


async def test_production_starts_as_devart_app(database_url: str, broker_settings: BrokerSettings) -> None:
    settings = fast_settings(database_url, broker_settings).model_copy(
        update={"environment": "production", "db_app_password": SecretStr("a-long-password")})
    async with ControlPlane(settings, workers=False) as cp:
        async with cp.pool.acquire() as conn:
            assert await conn.fetchval("SELECT session_user") == APP_ROLE
