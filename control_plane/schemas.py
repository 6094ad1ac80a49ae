"""Task input schemas, as the agents of live pools declare them in their hello.

``POST /api/v1/tasks`` checks a task's input against the schema of the pools that can take it
when one of them declares its type, so bad input is a 422 naming the field at submission instead of
a failure on the agent. The schemas of live pools are read at most every ``refresh_s`` seconds (a
submission costs no extra query on the hot path); a type that no live pool declares is not checked
(its task waits as ``pending`` for a pool to appear).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from control_plane.errors import InvalidInput

_LIVE_POOLS = """
SELECT p.id, p.skills, p.types, p.input_schemas FROM pools p
WHERE EXISTS (SELECT 1 FROM agents a WHERE a.pool_id = p.id AND a.state IN ('active', 'paused')
                AND a.last_heartbeat > now() - make_interval(secs => $1))
ORDER BY p.id
"""


@dataclass(frozen=True)
class PoolTypes:
    pool_id: str
    skills: frozenset[str]
    types: tuple[str, ...]
    schemas: dict[str, dict[str, Any]]


class InputSchemas:
    """The live pools' task types and schemas, refreshed lazily; validates task inputs."""

    def __init__(self, *, agent_ttl_s: float, refresh_s: float) -> None:
        self._agent_ttl_s = agent_ttl_s
        self._refresh_s = refresh_s
        self._loaded_at = float("-inf")
        self._pools: list[PoolTypes] = []
        self._validators: dict[str, Draft202012Validator] = {}

    def forget(self) -> None:
        """Read the pools again on next use (an agent said hello in this process)."""
        self._loaded_at = float("-inf")

    async def pools(self, conn: asyncpg.Connection) -> list[PoolTypes]:
        now = time.monotonic()
        if now - self._loaded_at >= self._refresh_s:
            rows = await conn.fetch(_LIVE_POOLS, self._agent_ttl_s)
            self._pools = [PoolTypes(r["id"], frozenset(r["skills"]), tuple(r["types"]), r["input_schemas"] or {})
                           for r in rows]
            self._loaded_at = now
        return self._pools

    async def validate(self, conn: asyncpg.Connection, *, type: str, requires: list[str], data: dict[str, Any],
                       field: str = "body.input") -> None:
        """Raise :class:`InvalidInput` naming the first bad field when the schema of every live pool
        that can take the task and declares its type refuses ``data``."""
        declared = [p.schemas[type] for p in await self.pools(conn)
                    if type in p.types and p.skills >= set(requires) and type in p.schemas]
        first: ValidationError | None = None
        for schema in declared:
            error = self._first_error(schema, data)
            if error is None:
                return
            first = first or error
        if first is not None:
            where = ".".join([field, *(str(part) for part in first.absolute_path)])
            raise InvalidInput(f"{where}: {first.message} (input schema of task type '{type}')", field=where)

    def _first_error(self, schema: dict[str, Any], data: dict[str, Any]) -> ValidationError | None:
        key = hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()
        validator = self._validators.get(key)
        if validator is None:
            validator = self._validators[key] = Draft202012Validator(schema)
        return min(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), str(e.absolute_path)),
                   default=None)
