"""Console sessions under row-level security: a request role reads no session, and the console's
functions find the one session whose id the caller holds."""

from __future__ import annotations

import json

import asyncpg

from control_plane.auth import Principal, create_token
from dashboard.sessions import _digest, close_session, open_session, session_principal


async def test_sessions_are_reached_only_through_their_functions(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        token_id, _ = await create_token(conn, name="alice", role="supervisor", created_by="test")

        session_id = await open_session(conn, Principal(token_id, "alice", "supervisor"), ttl_s=60, remote="")
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE devart_app")
            # the control plane's login finds the session by its id, through the function
            assert (await session_principal(conn, session_id)) == Principal(token_id, "alice", "supervisor")
            await conn.execute("SET LOCAL ROLE authenticated")
            claims = {"role": "authenticated", "app_metadata": {"devart_role": "supervisor"}}
            await conn.execute("SELECT set_config('request.jwt.claims', $1, true)", json.dumps(claims))
            # a request, even a supervisor's, sees no session row and so no digest to replay
            assert await conn.fetchval("SELECT count(*) FROM console_sessions") == 0
        assert await conn.fetchval("SELECT id_hash FROM console_sessions") == _digest(session_id)
        assert await close_session(conn, session_id) and not await close_session(conn, session_id)
        assert await session_principal(conn, session_id) is None
    finally:
        await conn.close()
