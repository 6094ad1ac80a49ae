"""``devart migrate | serve | up | down | aiops | agent | config``: running devart itself."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from agents.sdk import eventloop
from control_plane import runstate
from control_plane.cli_common import CliError, Exit, command, positive_int
from control_plane.settings import Settings

if TYPE_CHECKING:
    import uvicorn

    from control_plane.service import ControlPlane

log = logging.getLogger("devart")


def register(sub: argparse._SubParsersAction) -> None:
    command(sub, "migrate", help="apply database migrations", run=_run_migrate)
    serve = command(sub, "serve", help="run the API and the control plane's workers (no agents)", run=_run_serve)
    up = command(sub, "up", help="migrate, serve, and run a local shell-agent pool and the AIOps service",
                 run=_run_up)
    for parser in (serve, up):
        parser.add_argument("--host", help="address to listen on (default $DEVART_HOST or 127.0.0.1)")
        parser.add_argument("--port", type=int, help="port to listen on (default $DEVART_PORT or 8000)")
    up.add_argument("--agents", type=int, default=1, help="shell agent processes to start (default 1)")
    up.add_argument("--slots", type=positive_int, default=2, help="concurrent tasks per agent (default 2)")
    down = command(sub, "down", help="stop the `devart up` of this DEVART_HOME and its embedded Postgres",
                   run=_run_down)
    down.add_argument("--wait", type=float, default=60.0, help="seconds to wait for `devart up` to stop (default 60)")
    command(sub, "aiops", help="run the AIOps service: spans -> signals -> anomalies -> incidents", run=_run_aiops)
    agent = command(sub, "agent", help="run a built-in agent (give it AMQP_URL and DEVART_BROKER_PREFIX)",
                    run=_run_agent)
    agent.add_argument("kind", choices=["shell", "noop"], help="which built-in agent")
    agent.add_argument("--slots", type=positive_int, default=2, help="concurrent tasks (default 2)")
    config = command(sub, "config", help="print every environment variable devart reads", run=_run_config)
    config.add_argument("--env", action="store_true", help="as a .env file instead of a Markdown table")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    return Settings(**overrides)


def _run_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    return eventloop.run(_migrate(settings), settings.event_loop)


async def _migrate(settings: Settings) -> int:
    from control_plane.db import migrate_database
    from control_plane.service import resolve_database

    applied = await migrate_database((await resolve_database(settings)).owner_url)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    return eventloop.run(_serve(settings), settings.event_loop)


def _run_up(args: argparse.Namespace) -> int:
    settings = _settings(args)
    return eventloop.run(_serve(settings, agents=args.agents, agent_slots=args.slots, aiops=True), settings.event_loop)


def _run_aiops(args: argparse.Namespace) -> int:
    settings = _settings(args)
    return eventloop.run(_aiops(settings), settings.event_loop)


def _run_agent(args: argparse.Namespace) -> int:
    os.execv(sys.executable, [sys.executable, "-m", f"agents.{args.kind}", "--slots", str(args.slots)])


def _run_config(args: argparse.Namespace) -> int:
    from control_plane.configuration import env_file, markdown_table

    print(env_file() if args.env else markdown_table(), end="")
    return 0


async def _aiops(settings: Settings) -> int:
    from aiops.service import AiopsService
    from aiops.settings import AiopsSettings
    from control_plane.db import SERVICE_ROLE, create_pool, migrate_database, set_app_password
    from control_plane.service import resolve_database

    db = await resolve_database(settings)
    await migrate_database(db.owner_url)
    if db.app_password is not None:
        await set_app_password(db.owner_url, db.app_password)
    pool = await create_pool(db.app_url, role=SERVICE_ROLE, min_size=1, max_size=4)
    try:
        async with AiopsService(AiopsSettings(), pool=pool) as service:
            await service.run_forever()
    finally:
        await pool.close()
    return 0


@asynccontextmanager
async def _aiops_in_process(cp: ControlPlane, enabled: bool) -> AsyncIterator[None]:
    """``devart up`` runs the AIOps service in the control plane's process, on its pool."""
    if not enabled:
        yield
        return
    from aiops.service import AiopsService
    from aiops.settings import AiopsSettings

    async with AiopsService(AiopsSettings(), pool=cp.loops_pool) as service:
        service.start()
        yield


def _server(config: uvicorn.Config) -> uvicorn.Server:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM once it has shut down, which would kill this process before
        it stops its agents and revokes their token: here a signal only asks for the shutdown."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    return Server(config)


async def _serve(settings: Settings, *, agents: int = 0, agent_slots: int = 2, aiops: bool = False) -> int:
    import uvicorn

    from control_plane.api.app import create_app
    from control_plane.auth import revoke_token
    from control_plane.service import ControlPlane

    async with ControlPlane(settings) as cp, _aiops_in_process(cp, aiops):
        app = create_app(control_plane=cp)
        server = _server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower(),
                                        access_log=False, lifespan="on",
                                        timeout_graceful_shutdown=5))  # event streams never end by themselves
        token_id, otlp_token = await _agent_token(cp) if agents else (None, "")
        children: list[subprocess.Popen[bytes]] = []
        try:
            children = [_spawn_agent(cp, settings, agent_slots, otlp_token) for _ in range(agents)]
            if children:
                log.info("started %d shell agent(s) with %d slot(s) each", len(children), agent_slots)
            runstate.write(settings.home, runstate.RunState(
                pid=os.getpid(), api_url=_api_url(settings), amqp_url=cp.amqp_url,
                broker_prefix=cp.broker.prefix or "", installation=cp.installation.id if cp.installation else "",
                started_at=datetime.now(UTC).isoformat(),
            ))
            print(f"devart is up: API {_api_url(settings)}, home {settings.home}, "
                  f"broker prefix {cp.broker.prefix!r}; stop with Ctrl-C or `devart down`", file=sys.stderr)
            await server.serve()
        finally:
            runstate.clear(settings.home, os.getpid())
            await _stop_children(children)
            if token_id is not None:
                await _revoke(cp, token_id, revoke_token)
    return 0


async def _revoke(cp: ControlPlane, token_id: UUID, revoke: Any) -> None:
    async with cp.owner_connection() as conn:
        await revoke(conn, token_id)
    log.info("revoked the agents' token %s", token_id)


def _api_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


async def _agent_token(cp: ControlPlane) -> tuple[UUID, str]:
    """An ``agent`` token for the spawned shell agents (registration and span export), scoped to
    their pool and revoked when ``devart up`` exits."""
    from agents.shell.agent import build_shell_agent
    from control_plane.auth import create_token

    async with cp.owner_connection() as conn:
        return await create_token(conn, name=f"devart-up-agents-{uuid4().hex[:8]}", role="agent",
                                  created_by="devart up", pools=[build_shell_agent().pool_id])


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when ``devart up`` dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn_agent(cp: ControlPlane, settings: Settings, slots: int, otlp_token: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **cp.broker.environment(), DEVART_HOME=str(settings.home),
               DEVART_API_URL=_api_url(settings), DEVART_OTLP_TOKEN=otlp_token)
    return subprocess.Popen([sys.executable, "-m", "agents.shell", "--slots", str(slots)], env=env,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)


async def _stop_children(children: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            await asyncio.to_thread(child.wait, timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
    if children:
        log.info("stopped %d agent(s)", len(children))


def _run_down(args: argparse.Namespace) -> int:
    """SIGTERM the recorded ``devart up`` and wait for it; then stop the embedded Postgres."""
    settings = Settings()
    state = runstate.read(settings.home)
    if state is not None and state.alive():
        os.kill(state.pid, signal.SIGTERM)
        if not _wait_gone(state.pid, args.wait):
            raise CliError(f"`devart up` (pid {state.pid}) did not stop within {args.wait:g} s", Exit.ERROR)
        print(f"stopped devart up (pid {state.pid})", file=sys.stderr)
    elif state is not None:
        runstate.path(settings.home).unlink(missing_ok=True)
    if settings.database_url is None:
        stopped = _stop_embedded_postgres(settings.home / "postgres", args.wait)
        if stopped:
            print(f"stopped the embedded Postgres under {settings.home}", file=sys.stderr)
    if state is None and settings.database_url is None and not stopped:
        print(f"nothing runs under {settings.home}", file=sys.stderr)
    return 0


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _stop_embedded_postgres(data: Path, timeout_s: float) -> bool:
    """Fast shutdown of the postmaster recorded in ``postmaster.pid``; False when none runs."""
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, signal.SIGINT)
    except (OSError, ValueError):
        return False
    if not _wait_gone(pid, timeout_s):
        raise CliError(f"the embedded Postgres (pid {pid}) did not stop within {timeout_s:g} s", Exit.ERROR)
    return True
