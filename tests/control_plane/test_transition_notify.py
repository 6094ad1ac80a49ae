"""Task transitions are announced on ``devart_events`` once per statement that records them."""

from __future__ import annotations

import json

import asyncpg

from control_plane.api.hub import events_of
from tests.support.system import wait_for

_TASK = """INSERT INTO tasks (id, type, status, max_attempts, timeout_s, backoff)
           VALUES (gen_random_uuid(), 'noop', 'pending', 1, 1, '{}') RETURNING id"""
_RECORD = """INSERT INTO task_transitions (task_id, attempt, from_status, to_status, actor, reason)
             SELECT $1, n, 'queued', 'running', 'agent-' || n, repeat($2, $3) FROM generate_series(1, $4) AS n"""


async def test_a_statements_transitions_share_notifications_below_the_payload_limit(database_url: str) -> None:
    listener, writer = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    payloads: list[str] = []
    try:
        await listener.add_listener("devart_events", lambda *args: payloads.append(args[3]))
        task_id = await writer.fetchval(_TASK)

        async def heard(lines: int) -> None:
            async def enough() -> bool:
                return sum(len(events_of(p)) for p in payloads) >= lines

            await listener.fetchval("SELECT 1")  # a round trip: what was committed before is delivered
            await wait_for(enough, what=f"{lines} transitions on devart_events")

        await writer.execute(_RECORD, task_id, "short", 1, 3)
        await heard(3)
        assert len(payloads) == 1
        assert [json.loads(line)["attempt"] for line in events_of(payloads[0])] == [1, 2, 3]

        # Reasons of 500 two-byte characters: 40 documents of over 1 kB do not fit one notification.
        payloads.clear()
        await writer.execute(_RECORD, task_id, "é", 600, 40)
        await heard(40)
        documents = [json.loads(line) for p in payloads for line in events_of(p)]
        assert [d["attempt"] for d in documents] == list(range(1, 41))
        assert {len(d["reason"]) for d in documents} == {500}
        assert all(d["task_id"] == str(task_id) and d["to"] == "running" for d in documents)
        assert 10 <= len(payloads) < 40
        assert max(len(p.encode()) for p in payloads) < 8000
    finally:
        await listener.close()
        await writer.close()
