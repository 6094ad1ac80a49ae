"""Each API request's database identity: its transaction runs as ``authenticated`` with the caller's
claims, as PostgREST runs Supabase's requests, so row-level security (docs/rls.md) decides what the
request may read and write whatever the handler checked.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from control_plane.auth import Principal

REQUEST_ROLE = "authenticated"


def claims(principal: Principal) -> dict[str, Any]:
    """The claims a policy sees through ``auth.jwt()``: a Supabase user's verified token claims as they
    are (as PostgREST passes them); for a devart token, claims of the same shape, with the devart role
    in ``app_metadata`` (which a Supabase user cannot edit) and the token id as ``sub``."""
    if principal.claims is not None:
        return dict(principal.claims)
    return {"sub": str(principal.token_id), "role": REQUEST_ROLE, "aud": REQUEST_ROLE,
            "app_metadata": {"devart_role": principal.role, "devart_token": principal.name}}


async def assume(conn: asyncpg.Connection, principal: Principal) -> None:
    """Switch the open transaction of ``conn`` to ``principal`` until it ends (one round trip)."""
    await conn.execute(
        "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
        REQUEST_ROLE, json.dumps(claims(principal)),
    )


def _literal(text: str) -> str:
    """``text`` as an SQL string literal, whatever ``standard_conforming_strings`` is: an escape
    string (``E'...'``) with its backslashes and quotes escaped. For ASCII text (``json.dumps``
    escapes everything else), so no encoding can read a quote where there is none."""
    if not text.isascii() or "\x00" in text:
        raise ValueError("only ASCII text without NUL is written into SQL")
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


@asynccontextmanager
async def transaction_as(conn: asyncpg.Connection, principal: Principal) -> AsyncIterator[None]:
    """A transaction on ``conn`` under ``principal``, opened in one round trip instead of two:
    BEGIN and the switch travel as one simple query, the claims in it as a literal (simple queries
    take no parameters). Committed at the end, rolled back on an exception. What runs inside must
    not open a transaction of its own (asyncpg refuses ``conn.transaction()`` in it)."""
    await conn.execute(
        f"BEGIN; SELECT set_config('role', '{REQUEST_ROLE}', true), "
        f"set_config('request.jwt.claims', {_literal(json.dumps(claims(principal)))}, true)"
    )
    try:
        yield
    except BaseException:
        # a broken connection cannot roll back: the pool discards it, and Postgres ends the transaction
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await conn.execute("ROLLBACK")
        raise
    if await conn.execute("COMMIT") != "COMMIT":  # Postgres answers ROLLBACK to a failed transaction
        raise asyncpg.InterfaceError("the transaction had failed and was rolled back")


@asynccontextmanager
async def acting_as(pool: asyncpg.Pool, principal: Principal) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a transaction under ``principal``, for work outside a request's own (streams)."""
    async with pool.acquire() as conn, conn.transaction():
        await assume(conn, principal)
        yield conn
