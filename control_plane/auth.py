"""API tokens and roles. Tokens are random, shown once, and stored only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

import asyncpg

from control_plane.errors import Conflict, InvalidInput, NotFound

Role = Literal["admin", "supervisor", "viewer", "ci", "agent"]
ROLES: tuple[Role, ...] = ("admin", "supervisor", "viewer", "ci", "agent")
TOKEN_PREFIX = "dvt_"

CREATE_TASKS = "tasks:create"
OPERATE_TASKS = "tasks:operate"
OPERATE_AGENTS = "agents:operate"
MANAGE_TOKENS = "tokens:manage"
INGEST_TRACES = "traces:ingest"
OPERATE_INCIDENTS = "incidents:operate"
RECORD_CHANGES = "changes:record"
DECIDE_APPROVALS = "approvals:decide"
PROPOSE_REMEDIATIONS = "remediations:propose"
CONTROL_REMEDIATION = "remediation:control"
READ_ENV = "tasks:read-env"
"""See the values of a task's plain ``input.env`` (others see its keys with redacted values)."""
REGISTER_AGENT = "agents:register"
READ = "read"

PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({READ}),
    "ci": frozenset({READ, CREATE_TASKS, RECORD_CHANGES}),
    "supervisor": frozenset({READ, READ_ENV, CREATE_TASKS, OPERATE_TASKS, OPERATE_AGENTS, OPERATE_INCIDENTS,
                             RECORD_CHANGES, DECIDE_APPROVALS, PROPOSE_REMEDIATIONS}),
    "admin": frozenset(
        {READ, READ_ENV, CREATE_TASKS, OPERATE_TASKS, OPERATE_AGENTS, OPERATE_INCIDENTS, RECORD_CHANGES, MANAGE_TOKENS,
         INGEST_TRACES, DECIDE_APPROVALS, PROPOSE_REMEDIATIONS, CONTROL_REMEDIATION}
    ),
    # agent tokens exist so agent processes can register (to sign their events) and export spans
    "agent": frozenset({REGISTER_AGENT, INGEST_TRACES}),
}


@dataclass(frozen=True)
class Principal:
    """Who calls: a devart token (``token_id`` its id) or a Supabase user (``token_id`` the user's id).

    ``claims`` are the verified claims of a Supabase access token, None for a devart token.
    """

    token_id: UUID
    name: str
    role: Role
    claims: Mapping[str, Any] | None = field(default=None, compare=False)

    def can(self, permission: str) -> bool:
        return permission in PERMISSIONS[self.role]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


POOL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


async def create_token(
    conn: asyncpg.Connection, *, name: str, role: str, created_by: str, pools: Sequence[str] | None = None
) -> tuple[UUID, str]:
    """Create a token; returns its id and the secret, which is never stored or shown again.

    ``pools`` scopes an ``agent`` token: its agents may register in these pools only (None: any pool,
    which production refuses at registration).
    """
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}", field="role")
    if not name.strip():
        raise InvalidInput("name must not be empty", field="name")
    if pools is not None:
        if role != "agent":
            raise InvalidInput("only an agent token is scoped to pools", field="pools")
        if not pools:
            raise InvalidInput("pools must name at least one pool (leave it out for a token of any pool)", field="pools")
        if bad := next((p for p in pools if not POOL_ID.match(p)), None):
            raise InvalidInput(f"{bad!r} is not a pool id", field="pools")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = uuid.uuid4()
    try:
        await conn.execute(
            "INSERT INTO api_tokens (id, name, role, token_hash, created_by, pools) VALUES ($1, $2, $3, $4, $5, $6)",
            token_id, name, role, hash_token(token), created_by, None if pools is None else list(pools),
        )
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"a token named {name!r} already exists", field="name") from exc
    return token_id, token


async def revoke_token(conn: asyncpg.Connection, token_id: UUID) -> None:
    status = await conn.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", token_id
    )
    if status == "UPDATE 0":
        raise NotFound(f"no active token {token_id}", field="token_id")


class TokenCache:
    """Verified tokens for a few seconds, so a request costs no token lookup on the hot path.

    Revocation takes effect within ``ttl_s`` on every API process.
    """

    def __init__(self, ttl_s: float = 5.0, max_entries: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    async def authenticate(self, conn: asyncpg.Connection | asyncpg.Pool, token: str) -> Principal | None:
        """The token's principal (None: unknown or revoked); ``conn`` is read only when the cache misses."""
        digest = hash_token(token)
        now = time.monotonic()
        cached = self._entries.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        # api_tokens is an admin's table: authentication reads it through a SECURITY DEFINER function
        row = await conn.fetchrow("SELECT id, name, role FROM devart_authenticate($1)", digest)
        principal = Principal(row["id"], row["name"], row["role"]) if row else None
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[digest] = (now + self._ttl_s, principal)
        return principal

    def forget(self) -> None:
        self._entries.clear()
