"""``devart supabase ...``: Supabase Auth users and their devart role, through the admin API.

These commands talk to Supabase only (``DEVART_SUPABASE_URL`` with the service role key, or the
anon key for ``sign-in``), never to a running devart; docs/supabase.md shows where they fit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from agents.sdk import eventloop
from control_plane.cli_common import CliError, Exit, command, emit, group, table
from control_plane.errors import DomainError
from control_plane.settings import Settings

T = TypeVar("T")
_ROLES = ("admin", "supervisor", "ci", "viewer", "none")


def register(sub: argparse._SubParsersAction) -> None:
    supabase = group(sub, "supabase", help="Supabase Auth users allowed into devart, and their roles")
    command(supabase, "users", run=_users, help="list the project's users and their devart role "
                                                "(needs DEVART_SUPABASE_URL and DEVART_SUPABASE_SERVICE_ROLE_KEY)")
    create = command(supabase, "create-user", run=_create_user,
                     help="create a confirmed user, with a devart role if --role is given")
    create.add_argument("--email", required=True, help="the new user's email address")
    create.add_argument("--role", choices=_ROLES, default="none", help="devart role (app_metadata.devart_role)")
    create.add_argument("--password-stdin", action="store_true",
                        help="read the password from stdin (without it the user has none yet: invite or reset)")
    set_role = command(supabase, "set-role", run=_set_role,
                       help="set a user's devart role, or remove it with `none`; it takes effect with the user's "
                            "next access token (Supabase issues one at sign-in and every refresh)")
    set_role.add_argument("user", help="the user's email or id")
    set_role.add_argument("role", choices=_ROLES, help="devart role to set (app_metadata.devart_role)")
    sign_in = command(supabase, "sign-in", run=_sign_in,
                      help="sign in as a user and print their access token, for DEVART_TOKEN "
                           "(needs DEVART_SUPABASE_URL and DEVART_SUPABASE_ANON_KEY)")
    sign_in.add_argument("--email", required=True, help="the user's email address")
    sign_in.add_argument("--password-stdin", action="store_true", required=True, help="read the password from stdin")


def _run(work: Callable[[], Awaitable[T]]) -> T:
    from supabase_auth.errors import AuthApiError, AuthError, AuthRetryableError

    try:
        return eventloop.run(work(), Settings().event_loop)
    except DomainError as exc:
        raise CliError(exc.message, Exit.USAGE if exc.field and exc.field.startswith("DEVART_") else Exit.REFUSED) \
            from exc
    except AuthRetryableError as exc:
        raise CliError(f"cannot reach Supabase Auth: {exc.message}", Exit.UNREACHABLE) from exc
    except AuthApiError as exc:
        raise CliError(f"Supabase Auth said {exc.status}: {exc.message} ({exc.code})",
                       Exit.REFUSED if exc.status < 500 else Exit.SERVER_ERROR) from exc
    except AuthError as exc:
        raise CliError(f"Supabase Auth: {exc.message}", Exit.REFUSED) from exc


def _password(args: argparse.Namespace) -> str | None:
    if not args.password_stdin:
        return None
    password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise CliError("--password-stdin: stdin held no password", Exit.USAGE)
    return password


def _role(args: argparse.Namespace) -> str | None:
    return None if args.role == "none" else args.role


def _users(args: argparse.Namespace) -> int:
    from control_plane.supabase.admin import SupabaseAdmin

    async def work() -> list[dict[str, Any]]:
        async with SupabaseAdmin(Settings().supabase) as admin:
            return [u.public() for u in await admin.users()]

    users = _run(work)
    emit(args, users, lambda rows: table(rows, [("id", "id"), ("email", "email"), ("devart_role", "devart role"),
                                                ("last_sign_in_at", "last sign-in")]))
    return int(Exit.OK)


def _create_user(args: argparse.Namespace) -> int:
    from control_plane.supabase.admin import SupabaseAdmin

    password = _password(args)

    async def work() -> dict[str, Any]:
        async with SupabaseAdmin(Settings().supabase) as admin:
            return (await admin.create_user(args.email, password=password, role=_role(args))).public()

    user = _run(work)
    emit(args, user, f"created Supabase user {user['id']} ({user['email']}) with devart role {user['devart_role'] or 'none'}")
    return int(Exit.OK)


def _set_role(args: argparse.Namespace) -> int:
    from control_plane.supabase.admin import SupabaseAdmin

    async def work() -> dict[str, Any]:
        async with SupabaseAdmin(Settings().supabase) as admin:
            user = await admin.find(args.user)
            return (await admin.set_role(user.id, _role(args))).public()

    user = _run(work)
    emit(args, user, f"Supabase user {user['id']} ({user['email']}) now has devart role {user['devart_role'] or 'none'}"
                     " from their next access token")
    return int(Exit.OK)


def _sign_in(args: argparse.Namespace) -> int:
    from control_plane.supabase.admin import sign_in

    password = _password(args)
    assert password is not None
    signed_in = _run(lambda: sign_in(Settings().supabase, args.email, password))
    emit(args, {"access_token": signed_in.access_token, "expires_at": signed_in.expires_at,
                "user": signed_in.user.public()}, signed_in.access_token)
    return int(Exit.OK)
