"""Console sessions: a token is exchanged once for a random session id kept in a cookie.

Postgres stores only the SHA-256 digest of the id, so a read of the table signs nobody in. A session
is valid while it is not signed out, not expired, and its API token is not revoked: the lookup joins
the live token, so revoking a token ends its sessions at the next request. The table is reached only
through SECURITY DEFINER functions (migration 0081), as ``api_tokens`` is for authentication. The CSRF token of a
session is an HMAC of its id: bound to the session, never stored, unknown to a page on another site.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import asyncpg

from control_plane.auth import Principal

COOKIE = "devart_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def csrf_token(session_id: str) -> str:
    return hmac.new(session_id.encode(), b"devart-console-csrf", hashlib.sha256).hexdigest()


def csrf_matches(session_id: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(csrf_token(session_id), presented)


async def open_session(conn: asyncpg.Connection, principal: Principal, *, ttl_s: float, remote: str) -> str:
    """A new session for ``principal``; returns its id (shown to the browser only, in the cookie)."""
    session_id = secrets.token_urlsafe(32)
    await conn.execute("SELECT devart_console_open($1, $2, $3, $4)", _digest(session_id), principal.token_id,
                       ttl_s, remote)
    return session_id


async def session_principal(conn: asyncpg.Connection, session_id: str) -> Principal | None:
    row = await conn.fetchrow("SELECT id, name, role FROM devart_console_session($1)", _digest(session_id))
    return Principal(row["id"], row["name"], row["role"]) if row else None


async def close_session(conn: asyncpg.Connection, session_id: str) -> bool:
    return bool(await conn.fetchval("SELECT devart_console_close($1)", _digest(session_id)))
