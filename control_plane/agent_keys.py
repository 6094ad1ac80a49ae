"""The control plane's half of ``agents.sdk.trust``: its signing key, agents' event keys, and the
check that an event comes from the agent it names.

The signing key is made once per installation (the first control plane to start inserts it; every
replica reads the same row). An agent registers with an ``agent`` token and gets a fresh event key
bound to its agent id and that token; an id registered by one token cannot be taken by another,
and a revoked token's agents' events are refused from then on.
"""

from __future__ import annotations

import secrets
import time

import asyncpg

from agents.sdk.trust import MessageSigner, event_signature_valid
from control_plane.auth import Principal
from control_plane.errors import Conflict

_KEY_TTL_S = 5.0


async def load_signer(conn: asyncpg.Connection) -> MessageSigner:
    """The installation's signer, created by whichever control plane starts first."""
    await conn.execute(
        "INSERT INTO signing_keys (id, private_key, public_key) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
        *_new_pair(),
    )
    return MessageSigner(await conn.fetchval("SELECT private_key FROM signing_keys WHERE id = 1"))


def _new_pair() -> tuple[bytes, bytes]:
    private = MessageSigner.generate()
    return private, MessageSigner(private).public_key


async def register_agent(conn: asyncpg.Connection, who: Principal, agent_id: str) -> bytes:
    """A new event key for ``agent_id``, owned by ``who``'s token (re-registering rotates it)."""
    key = secrets.token_bytes(32)
    # agent_keys is an admin's table: the function binds the id to the request's token (its claims' sub)
    owner = await conn.fetchval("SELECT devart_register_agent($1, $2)", agent_id, key)
    if owner != who.token_id:
        raise Conflict(f"agent id {agent_id!r} is registered by another token", field="body.agent_id")
    return key


class EventVerifier:
    """Checks each event's signature against its agent's key (looked up, then cached a few seconds)."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[float, bytes | None]] = {}

    async def refusal(self, conn: asyncpg.Connection, agent_id: str, body: bytes, signature: object) -> str | None:
        """None when the event is signed by ``agent_id``'s key, else why it is refused."""
        if signature is None:
            return f"unsigned event claiming to be from agent {agent_id!r}"
        key = await self._key(conn, agent_id)
        if key is None:
            return f"event from unregistered (or revoked) agent {agent_id!r}"
        if not event_signature_valid(key, body, signature):
            return f"forged event: not signed by agent {agent_id!r}'s key"
        return None

    async def _key(self, conn: asyncpg.Connection, agent_id: str) -> bytes | None:
        now = time.monotonic()
        cached = self._keys.get(agent_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await conn.fetchval("SELECT devart_event_key($1)", agent_id)
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[agent_id] = (now + _KEY_TTL_S, key)
        return key

