"""``devart token create | list | revoke``, ``devart agents``, ``devart pools``, ``devart status``."""

from __future__ import annotations

import argparse
import getpass
import os
import shlex
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import httpx

from agents.sdk import eventloop
from control_plane import cli_remediation, runstate
from control_plane.broker import redact
from control_plane.cli_common import CliError, Exit, api, api_url, command, emit, group, home, table
from control_plane.settings import Settings

ROLES = ["admin", "supervisor", "viewer", "ci", "agent"]


def register(sub: argparse._SubParsersAction) -> None:
    tokens = group(sub, "token", help="create, list and revoke API tokens (directly in the database)")
    create = command(tokens, "create", run=_token_create,
                     help="create a token and print its secret (only it, on stdout; it is not shown again)")
    create.add_argument("--name", required=True, help="a unique name for the token (who or what uses it)")
    create.add_argument("--role", required=True, choices=ROLES, help="what the token may do (see README, Roles)")
    create.add_argument("--pool", action="append", dest="pools", metavar="POOL_ID",
                        help="agent tokens: a pool its agents may register in (repeat for more; "
                             "`python -m agents.shell --print-pool` names the shell agent's); none: any pool, "
                             "which production refuses at registration")
    command(tokens, "list", help="every token: name, role, created, last used, revoked (never secrets)",
            run=_token_list)
    revoke = command(tokens, "revoke", help="revoke a token by name or id (takes effect within 5 s)",
                     run=_token_revoke)
    revoke.add_argument("token", help="the token's name or id")

    agents = command(sub, "agents", help="agents: state, pool, slots, last heartbeat", run=_agents)
    agents.add_argument("--all", action="store_true", help="include agents that are gone")
    command(sub, "pools", help="agent pools: skills, types, live agents, free slots, queue depth", run=_pools)
    status = command(sub, "status", run=_status,
                     help="what runs: home, API, readiness, broker and its prefix, agents and pools, and "
                                  "whether the remediation kill switch is pulled (with a token)")
    status.add_argument("--agent-env", action="store_true",
                        help="print shell exports that let an agent join this installation: "
                             "eval \"$(devart status --agent-env)\"")


# --- tokens (straight in the database, so the first one needs no token) ----------------------------


def _in_database(work: Callable[[Any], Awaitable[Any]]) -> Any:
    settings = Settings()

    async def run() -> Any:
        from control_plane.db import connect, migrate_database
        from control_plane.service import resolve_database

        url = (await resolve_database(settings)).owner_url  # the local operator administers as the owner
        await migrate_database(url)
        conn = await connect(url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return eventloop.run(run(), settings.event_loop)


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _token_create(args: argparse.Namespace) -> int:
    from control_plane.audit import audit
    from control_plane.auth import create_token
    from control_plane.errors import DomainError

    async def work(conn: Any) -> tuple[UUID, str]:
        async with conn.transaction():
            token_id, secret = await create_token(conn, name=args.name, role=args.role, created_by=_actor(),
                                                  pools=args.pools)
            await audit(conn, actor=_actor(), action="token.create", target=str(token_id),
                        detail={"name": args.name, "role": args.role, "pools": args.pools})
        return token_id, secret

    try:
        token_id, secret = _in_database(work)
    except DomainError as exc:
        hint = ("; its secret was shown once, when it was created: pick another name, or revoke it with "
                f"`devart token revoke {args.name}` and create one under a new name") if "exists" in exc.message else ""
        raise CliError(exc.message + hint, Exit.REFUSED) from exc
    print(f"created token {token_id} named {args.name!r} with role {args.role}; store it now, it is not shown again",
          file=sys.stderr)
    emit(args, {"id": str(token_id), "name": args.name, "role": args.role, "pools": args.pools, "token": secret},
         secret)
    return 0


_TOKEN_COLUMNS = "id, name, role, pools, created_at, created_by, revoked_at, last_used_at"


def _token_list(args: argparse.Namespace) -> int:
    async def work(conn: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in await conn.fetch(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at")]

    rows = _in_database(work)
    emit(args, rows, lambda r: table(r, [("name", "name"), ("role", "role"), ("pools", "pools"), ("created_at", "created"),
                                         ("last_used_at", "last used"), ("revoked_at", "revoked"), ("id", "id")],
                                     empty="no tokens"))
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from control_plane.audit import audit

    try:
        by_id: UUID | None = UUID(args.token)
    except ValueError:
        by_id = None

    async def work(conn: Any) -> dict[str, Any] | None:
        async with conn.transaction():
            row = await conn.fetchrow(
                f"""UPDATE api_tokens SET revoked_at = now()
                    WHERE (id = $1 OR name = $2) AND revoked_at IS NULL RETURNING {_TOKEN_COLUMNS}""",
                by_id, args.token,
            )
            if row is not None:
                await audit(conn, actor=_actor(), action="token.revoke", target=str(row["id"]))
        return dict(row) if row else None

    row = _in_database(work)
    if row is None:
        raise CliError(f"no active token named or with id {args.token!r}", Exit.REFUSED)
    emit(args, row, f"revoked token {row['name']!r} ({row['id']})")
    return 0


# --- agents and pools (through the API) ------------------------------------------------------------


def _agents(args: argparse.Namespace) -> int:
    with api(args) as client:
        rows = client.get("/api/v1/agents", params={"include_gone": "true"} if args.all else {})
    emit(args, rows, lambda r: table(r, [("id", "id"), ("state", "state"), ("pool_id", "pool"), ("slots", "slots"),
                                         ("free_slots", "free"), ("last_heartbeat", "last heartbeat"),
                                         ("version", "version")], empty="no live agents"))
    return 0


def _pools(args: argparse.Namespace) -> int:
    with api(args) as client:
        rows = client.get("/api/v1/pools")
    emit(args, rows, lambda r: table(r, [("id", "id"), ("skills", "skills"), ("types", "types"),
                                         ("live_agents", "agents"), ("free_slots", "free"),
                                         ("queue_depth", "queued"), ("in_flight", "running")], empty="no pools"))
    return 0


# --- status -----------------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    where = home(args)
    state = runstate.read(where)
    if state is not None and not state.alive():
        state = None
    if args.agent_env:
        if state is None:
            raise CliError(f"no `devart up` runs with home {where}", Exit.REFUSED)
        for name, value in (("AMQP_URL", state.amqp_url), ("DEVART_BROKER_PREFIX", state.broker_prefix),
                            ("DEVART_API_URL", state.api_url)):
            print(f"export {name}={shlex.quote(value)}")
        return 0
    url = api_url(args)
    report: dict[str, Any] = {"home": str(where), "api": url, "up": None, "ready": None, "checks": {}}
    if state is not None:
        report["up"] = {"pid": state.pid, "started_at": state.started_at, "broker": redact(state.amqp_url),
                        "broker_prefix": state.broker_prefix, "installation": state.installation}
    code = Exit.OK
    try:
        ready = httpx.get(f"{url}/readyz", timeout=5.0)
        report["ready"] = ready.status_code == 200
        report["checks"] = ready.json().get("checks", ready.json())
    except (httpx.TransportError, ValueError) as exc:
        report["ready"], report["error"] = False, f"cannot reach the API: {type(exc).__name__}: {exc}"
        code = Exit.UNREACHABLE
    if code == Exit.OK and (args.token or os.environ.get("DEVART_TOKEN")):
        try:
            with api(args) as client:
                report["pools"] = client.get("/api/v1/pools")
                report["agents"] = client.get("/api/v1/agents")
                report["remediation"] = client.get("/api/v1/remediation/status")
        except CliError as exc:
            report["error"] = exc.message
    emit(args, report, _describe_status)
    return int(code)


def _describe_status(report: dict[str, Any]) -> str:
    lines = [f"home          {report['home']}", f"API           {report['api']}"]
    up = report["up"]
    if up is None:
        lines.append("devart up     not running with this home")
    else:
        lines += [f"devart up     pid {up['pid']} since {up['started_at']}",
                  f"broker        {up['broker']}",
                  f"broker prefix {up['broker_prefix']}  (agents need it: eval \"$(devart status --agent-env)\")",
                  f"installation  {up['installation']}"]
    lines.append(f"ready         {'yes' if report['ready'] else 'no'}"
                 + (f" ({report['error']})" if report.get("error") else ""))
    if "pools" in report:
        live = sum(1 for a in report["agents"] if a["state"] != "gone")
        lines.append(f"agents        {live} live in {len(report['pools'])} pool(s)")
    if "remediation" in report:
        lines.append(f"remediation   {cli_remediation.describe(report['remediation'])}")
    return "\n".join(lines)
