"""Each API request's database identity: its transaction runs as ``authenticated`` with the caller's
claims, as PostgREST runs Supabase's requests, so row-level security (docs/rls.md) decides what the
request may read and write whatever the handler checked.
"""

from __future__ import annotations

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


@asynccontextmanager
async def acting_as(pool: asyncpg.Pool, principal: Principal) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a transaction under ``principal``, for work outside a request's own (streams)."""
    async with pool.acquire() as conn, conn.transaction():
        await assume(conn, principal)
        yield conn
