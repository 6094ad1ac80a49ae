"""The control plane's half of ``agents.sdk.trust``: its signing key, agents' event keys, attempts'
delivery secrets, and the check that an event comes from the agent it names and, for a task event,
from an agent its attempt's message was delivered to.

The signing key and the delivery key are made once per installation (the first control plane to
start inserts them; every replica reads the same row). An attempt's delivery secret is derived from
the delivery key (keyed BLAKE2b of the task id and attempt) when its message is published, and again
when one of its events is checked: it is never stored. An agent registers with an ``agent`` token and gets a fresh event key
bound to its agent id, its pool and that token; an id registered by one token cannot be taken by
another, a token scoped to pools registers in those only, and a revoked token's agents' events are
refused from then on. An agent speaks only for its registered pool: events announcing another pool,
or about an attempt queued for another pool, are refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from agents.sdk.messages import Event, TaskFailed, TaskLog, TaskProgress, TaskStarted, TaskSucceeded
from agents.sdk.trust import MessageSigner, delivery_proof, event_signature_valid
from control_plane.auth import Principal
from control_plane.errors import Conflict, Forbidden

_KEY_TTL_S = 5.0
_TASK_EVENTS = (TaskStarted, TaskProgress, TaskLog, TaskSucceeded, TaskFailed)
TaskEvent = TaskStarted | TaskProgress | TaskLog | TaskSucceeded | TaskFailed


class DeliverySecrets:
    """Attempts' delivery secrets, and the check of a task event's proof of delivery."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def secret(self, task_id: UUID, attempt: int) -> bytes:
        return hashlib.blake2b(task_id.bytes + attempt.to_bytes(8, "big"), key=self._key, digest_size=32).digest()

    def header(self, task_message: bytes) -> str:
        """The ``x-devart-delivery-secret`` header of a task message (as the outbox holds it)."""
        message = json.loads(task_message)
        return base64.urlsafe_b64encode(self.secret(UUID(message["task_id"]), int(message["attempt"]))).decode()

    def proven(self, event: TaskEvent) -> bool:
        """Whether ``event`` carries the proof that its attempt's message was delivered to its agent."""
        return event.proof is not None and hmac.compare_digest(
            delivery_proof(self.secret(event.task_id, event.attempt), event.agent_id), event.proof)


@dataclass(frozen=True)
class InstallationKeys:
    signer: MessageSigner
    deliveries: DeliverySecrets


async def load_keys(conn: asyncpg.Connection) -> InstallationKeys:
    """The installation's signer and delivery key, created by whichever control plane starts first."""
    await conn.execute(
        """INSERT INTO signing_keys (id, private_key, public_key, delivery_key) VALUES (1, $1, $2, $3)
           ON CONFLICT (id) DO NOTHING""",
        *_new_pair(), secrets.token_bytes(32),
    )
    row = await conn.fetchrow("SELECT private_key, delivery_key FROM signing_keys WHERE id = 1")
    return InstallationKeys(MessageSigner(row["private_key"]), DeliverySecrets(row["delivery_key"]))


def _new_pair() -> tuple[bytes, bytes]:
    private = MessageSigner.generate()
    return private, MessageSigner(private).public_key


async def register_agent(
    conn: asyncpg.Connection, who: Principal, agent_id: str, pool_id: str, *, unscoped_tokens: bool = True
) -> bytes:
    """A new event key for ``agent_id`` in ``pool_id``, owned by ``who``'s token (re-registering
    rotates it). Run in a transaction: a refusal leaves nothing behind once it rolls back.

    ``unscoped_tokens`` False (production) refuses a token that names no pools.
    """
    key = secrets.token_bytes(32)
    # agent_keys is an admin's table: the functions bind the id to the request's token (its claims' sub)
    owner = await conn.fetchval("SELECT devart_register_agent($1, $2)", agent_id, key)
    if owner != who.token_id:
        raise Conflict(f"agent id {agent_id!r} is registered by another token", field="body.agent_id")
    scope = await conn.fetchrow("SELECT pools, bound FROM devart_bind_agent_pool($1, $2)", agent_id, pool_id)
    if not scope["bound"]:
        raise Forbidden(f"token {who.name!r} may not register agents in pool {pool_id!r} "
                        f"(it may in: {', '.join(scope['pools'] or ())})", field="body.pool_id")
    if scope["pools"] is None and not unscoped_tokens:
        raise Forbidden(f"token {who.name!r} is not scoped to pools, which production refuses: create one with "
                        f"`devart token create --role agent --pool {pool_id}`", field="body.pool_id")
    return key


@dataclass(frozen=True)
class _Registration:
    key: bytes | None
    pool_id: str | None
    """None for a registration older than pool-scoped tokens (migration 0021): not bound to a pool."""


class EventVerifier:
    """Checks each event's signature against its agent's key, that the agent speaks only for its
    registered pool (registrations looked up, then cached a few seconds), and that each task event
    proves its attempt was delivered to its agent."""

    def __init__(self, deliveries: DeliverySecrets) -> None:
        self._deliveries = deliveries
        self._registrations: dict[str, tuple[float, _Registration]] = {}

    async def refusal(self, conn: asyncpg.Connection, event: Event, body: bytes, signature: object) -> str | None:
        """None when ``event`` is signed by its agent's key and names no other pool, else why it is refused."""
        agent_id = event.agent_id
        if signature is None:
            return f"unsigned event claiming to be from agent {agent_id!r}"
        registration = await self._registration(conn, agent_id)
        if registration.key is None:
            return f"event from unregistered (or revoked) agent {agent_id!r}"
        if not event_signature_valid(registration.key, body, signature):
            return f"forged event: not signed by agent {agent_id!r}'s key"
        announced = getattr(event, "pool_id", None)
        if registration.pool_id is not None and announced is not None and announced != registration.pool_id:
            return (f"{event.kind} event of agent {agent_id!r}, registered in pool {registration.pool_id!r}, "
                    f"announcing pool {announced!r}")
        return None

    async def foreign_attempts(self, conn: asyncpg.Connection, events: Sequence[Event]) -> dict[int, str]:
        """Why each task event (by index in ``events``, authentic ones only) is refused because its
        attempt is queued for a pool other than its agent's: an agent may claim, run or finish only
        its own pool's attempts."""
        asked = [(i, e) for i, e in enumerate(events) if isinstance(e, _TASK_EVENTS)]
        if not asked:
            return {}
        rows = await conn.fetch(
            """SELECT a.task_id, a.attempt, a.pool_id FROM attempts a
               JOIN unnest($1::uuid[], $2::int[]) AS e(task_id, attempt) USING (task_id, attempt)""",
            [e.task_id for _, e in asked], [e.attempt for _, e in asked],
        )
        pools = {(r["task_id"], r["attempt"]): r["pool_id"] for r in rows}
        refused = {}
        for i, event in asked:
            agent_pool = (await self._registration(conn, event.agent_id)).pool_id
            attempt_pool = pools.get((event.task_id, event.attempt))
            if agent_pool is not None and attempt_pool is not None and attempt_pool != agent_pool:
                refused[i] = (f"{event.kind} event for task {event.task_id} attempt {event.attempt}, queued for pool "
                              f"{attempt_pool!r}, from agent {event.agent_id!r} of pool {agent_pool!r}")
        return refused

    def undelivered(self, events: Sequence[Event]) -> dict[int, str]:
        """Why each task event (by index in ``events``) is refused because it does not prove that its
        attempt's task message was delivered to its agent: no agent can speak for an attempt the
        broker gave another agent, or gave nobody yet."""
        refused = {}
        for i, event in enumerate(events):
            if isinstance(event, _TASK_EVENTS) and not self._deliveries.proven(event):
                what = "without a proof of delivery" if event.proof is None else "with a proof of delivery that does not match"
                refused[i] = (f"{event.kind} event for task {event.task_id} attempt {event.attempt} from agent "
                              f"{event.agent_id!r} {what}: the attempt's task message was not delivered to that agent")
        return refused

    async def _registration(self, conn: asyncpg.Connection, agent_id: str) -> _Registration:
        now = time.monotonic()
        cached = self._registrations.get(agent_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        registration = _Registration(await conn.fetchval("SELECT devart_event_key($1)", agent_id),
                                     await conn.fetchval("SELECT devart_agent_pool($1)", agent_id))
        if len(self._registrations) > 10_000:
            self._registrations.clear()
        self._registrations[agent_id] = (now + _KEY_TTL_S, registration)
        return registration

