"""The ``devart`` command: migrate, serve, up, aiops, token, submit, agent."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import httpx

from agents.sdk import eventloop
from control_plane.settings import Settings

if TYPE_CHECKING:
    from control_plane.service import ControlPlane

log = logging.getLogger("devart")

EXIT_BY_STATUS = {"succeeded": 0, "failed": 1, "dead": 2, "timed_out": 3, "cancelled": 4}


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    return Settings(**overrides)


async def _migrate(settings: Settings) -> None:
    from control_plane.db import migrate_database
    from control_plane.service import resolve_database

    applied = await migrate_database(await resolve_database(settings))
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))


async def _token_create(settings: Settings, name: str, role: str) -> None:
    from control_plane.auth import create_token
    from control_plane.db import connect, migrate_database
    from control_plane.errors import DomainError
    from control_plane.service import resolve_database

    url = await resolve_database(settings)
    await migrate_database(url)
    conn = await connect(url)
    try:
        token_id, token = await create_token(conn, name=name, role=role, created_by="cli")
    except DomainError as exc:
        raise SystemExit(f"devart token create: {exc.message}") from exc
    finally:
        await conn.close()
    print(f"created token {token_id} named {name!r} with role {role}; store it now, it is not shown again:")
    print(token)


async def _aiops(settings: Settings) -> None:
    from aiops.service import AiopsService
    from aiops.settings import AiopsSettings
    from control_plane.db import migrate_database
    from control_plane.service import resolve_database

    url = await resolve_database(settings)
    await migrate_database(url)
    async with AiopsService(AiopsSettings(), database_url=url) as service:
        await service.run_forever()


@asynccontextmanager
async def _aiops_in_process(cp: ControlPlane, enabled: bool) -> AsyncIterator[None]:
    """``devart up`` runs the AIOps service in the control plane's process, on its pool."""
    if not enabled:
        yield
        return
    from aiops.service import AiopsService
    from aiops.settings import AiopsSettings

    async with AiopsService(AiopsSettings(), pool=cp.pool) as service:
        service.start()
        yield


async def _serve(settings: Settings, *, agents: int = 0, agent_slots: int = 2, aiops: bool = False) -> None:
    import uvicorn

    from control_plane.api.app import create_app
    from control_plane.auth import revoke_token
    from control_plane.service import ControlPlane

    async with ControlPlane(settings) as cp, _aiops_in_process(cp, aiops):
        app = create_app(control_plane=cp)
        server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", access_log=False,
                                               lifespan="on"))
        token_id, otlp_token = await _agent_token(cp) if agents else (None, "")
        children = [_spawn_agent(cp.amqp_url, settings, agent_slots, otlp_token) for _ in range(agents)]
        if children:
            log.info("started %d shell agent(s) with %d slot(s) each", len(children), agent_slots)
        try:
            await server.serve()
        finally:
            await _stop_children(children)
            if token_id is not None:
                async with cp.pool.acquire() as conn:
                    await revoke_token(conn, token_id)


async def _agent_token(cp: ControlPlane) -> tuple[UUID, str]:
    """An ``agent`` token for the spawned agents' span export, revoked when ``devart up`` exits."""
    from control_plane.auth import create_token

    async with cp.pool.acquire() as conn:
        return await create_token(conn, name=f"devart-up-agents-{uuid4().hex[:8]}", role="agent",
                                  created_by="devart up")


def _spawn_agent(amqp_url: str, settings: Settings, slots: int, otlp_token: str) -> subprocess.Popen[bytes]:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    broker = settings.broker.model_copy(update={"amqp_url": amqp_url})
    env = dict(os.environ, **broker.environment(), DEVART_HOME=str(settings.home), DEVART_API_URL=f"http://{host}:{settings.port}",
               DEVART_OTLP_TOKEN=otlp_token)
    return subprocess.Popen([sys.executable, "-m", "agents.shell", "--slots", str(slots)], env=env)


async def _stop_children(children: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            await asyncio.to_thread(child.wait, timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()


def _api(url: str | None, token: str | None) -> httpx.Client:
    base = url or os.environ.get("DEVART_URL", "http://127.0.0.1:8000")
    secret = token or os.environ.get("DEVART_TOKEN")
    if not secret:
        raise SystemExit("devart submit: set DEVART_TOKEN or pass --token (create one with `devart token create`)")
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}, timeout=30.0)


def _submit(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"type": args.type, "requires": args.requires or []}
    if args.input:
        body["input"] = json.loads(Path(args.input[1:]).read_text() if args.input.startswith("@") else args.input)
    elif args.argv:
        body["input"] = {"command": args.argv}
    if args.timeout:
        body["timeout_s"] = args.timeout
    if args.max_attempts:
        body["max_attempts"] = args.max_attempts
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    with _api(args.url, args.token) as client:
        response = client.post("/api/v1/tasks", json=body, headers=headers)
        if response.status_code >= 400:
            print(f"devart submit: {response.status_code} {response.json().get('error', {}).get('message')}",
                  file=sys.stderr)
            return 64
        task = response.json()
        print(f"task {task['id']} {task['status']}", file=sys.stderr)
        if args.no_follow:
            print(json.dumps(task))
            return 0
        return _follow(client, task["id"])


def _follow(client: httpx.Client, task_id: str) -> int:
    """Stream the task's logs until it ends; the exit code says how it ended."""
    with client.stream("GET", f"/api/v1/tasks/{task_id}/logs", params={"follow": "true"}, timeout=None) as stream:
        event = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "log":
                entry = json.loads(line[6:])
                print(entry["line"], file=sys.stderr if entry["stream"] == "stderr" else sys.stdout)
            elif line.startswith("data: ") and event == "end":
                break
    task = client.get(f"/api/v1/tasks/{task_id}").json()
    print(json.dumps({k: task[k] for k in ("id", "status", "status_reason", "result", "error")}))
    return EXIT_BY_STATUS.get(task["status"], 1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devart", description="devart: orchestrator for teams of DevOps agents")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations")
    serve = sub.add_parser("serve", help="run the API and the control plane's workers")
    up = sub.add_parser("up", help="migrate, serve, and run a local shell-agent pool and the AIOps service")
    sub.add_parser("aiops", help="run the AIOps service: spans -> signals -> anomalies -> incidents")
    for p in (serve, up):
        p.add_argument("--host")
        p.add_argument("--port", type=int)
    up.add_argument("--agents", type=int, default=1, help="shell agent processes to start")
    up.add_argument("--slots", type=int, default=2, help="concurrent tasks per agent")
    token = sub.add_parser("token", help="manage API tokens").add_subparsers(dest="token_command", required=True)
    create = token.add_parser("create", help="create a token; it is printed as the last line")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=["admin", "supervisor", "viewer", "ci", "agent"])
    submit = sub.add_parser("submit", help="submit a task and follow it to its end")
    submit.add_argument("--type", default="shell")
    submit.add_argument("--input", help="JSON input, or @file")
    submit.add_argument("--requires", action="append", help="a required capability (repeatable)")
    submit.add_argument("--timeout", type=float)
    submit.add_argument("--max-attempts", type=int)
    submit.add_argument("--idempotency-key")
    submit.add_argument("--url", help="API base URL (default $DEVART_URL or http://127.0.0.1:8000)")
    submit.add_argument("--token", help="API token (default $DEVART_TOKEN)")
    submit.add_argument("--no-follow", action="store_true", help="print the created task and exit")
    submit.add_argument("argv", nargs=argparse.REMAINDER, help="for shell tasks: the command after --")
    config = sub.add_parser("config", help="print every environment variable devart reads")
    config.add_argument("--env", action="store_true", help="as a .env file instead of a Markdown table")
    agent = sub.add_parser("agent", help="run a built-in agent")
    agent.add_argument("kind", choices=["shell", "noop"])
    agent.add_argument("--slots", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("DEVART_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "submit":
        if args.argv[:1] == ["--"]:
            args.argv = args.argv[1:]
        return _submit(args)
    if args.command == "config":
        from control_plane.configuration import env_file, markdown_table

        print(env_file() if args.env else markdown_table(), end="")
        return 0
    if args.command == "agent":
        os.execv(sys.executable, [sys.executable, "-m", f"agents.{args.kind}", "--slots", str(args.slots)])
    settings = _settings(args)
    if args.command == "migrate":
        eventloop.run(_migrate(settings), settings.event_loop)
    elif args.command == "token":
        eventloop.run(_token_create(settings, args.name, args.role), settings.event_loop)
    elif args.command == "serve":
        eventloop.run(_serve(settings), settings.event_loop)
    elif args.command == "up":
        eventloop.run(_serve(settings, agents=args.agents, agent_slots=args.slots, aiops=True), settings.event_loop)
    elif args.command == "aiops":
        eventloop.run(_aiops(settings), settings.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
