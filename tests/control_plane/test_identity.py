"""identity.transaction_as: BEGIN and the identity switch in one simple query, the claims as a literal."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from control_plane import identity
from control_plane.auth import Principal
from control_plane.service import ControlPlane

HOSTILE_NAMES = [
    "o'brien",
    "'); SELECT set_config('role', 'devart_service', true); --",
    "back\\slash\\' OR true --",
    "\\'; COMMIT; DROP TABLE tasks; --",
    "$$ $tag$ dollar quotes $tag$",
    "naïve ✓ \u2028 line separator",
    "tab\tnew\nline\r\"quoted\"",
]


@pytest.mark.parametrize("standard_strings", ["on", "off"])
async def test_the_claims_reach_postgres_exactly_whatever_the_name(
    cp: ControlPlane, db: asyncpg.Pool, standard_strings: str
) -> None:
    async with cp.pool.acquire() as conn:
        await conn.execute(f"SET standard_conforming_strings = {standard_strings}")
        try:
            for name in HOSTILE_NAMES:
                who = Principal(uuid.uuid4(), name, "ci")
                async with identity.transaction_as(conn, who):
                    role, claims = await conn.fetchrow(
                        "SELECT current_user, current_setting('request.jwt.claims')::jsonb")
                    assert role == identity.REQUEST_ROLE
                    assert claims == identity.claims(who), name
                assert not conn.is_in_transaction()
                assert await conn.fetchval("SELECT current_user") != identity.REQUEST_ROLE
        finally:
            await conn.execute("RESET standard_conforming_strings")
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0  # nothing a name said ran


async def test_an_exception_rolls_the_transaction_back(cp: ControlPlane) -> None:
    who = Principal(uuid.uuid4(), "admin-caller", "admin")
    async with cp.pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="inside"):
            async with identity.transaction_as(conn, who):
                await conn.execute(
                    "INSERT INTO audit_log (actor, action, target, detail) VALUES ('t', 'test.rollback', 'x', '{}')")
                raise RuntimeError("inside")
        assert not conn.is_in_transaction()
        async with identity.transaction_as(conn, who):
            assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'test.rollback'") == 0


def test_text_that_could_escape_its_literal_is_refused() -> None:
    with pytest.raises(ValueError, match="ASCII"):
        identity._literal("\x00")
    with pytest.raises(ValueError, match="ASCII"):
        identity._literal("é")
