"""How the system is doing right now: tasks by state, and tasks finished per time bucket (throughput
and failure rate over a recent window). Read by the console's overview page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

FAILED = ("failed", "dead", "timed_out")


@dataclass(frozen=True)
class Bucket:
    start: datetime
    finished: int
    failed: int

    @property
    def failure_rate(self) -> float:
        return self.failed / self.finished if self.finished else 0.0


async def counts_by_status(conn: asyncpg.Connection) -> dict[str, int]:
    return {r["status"]: r["n"] for r in await conn.fetch("SELECT status, count(*) AS n FROM tasks GROUP BY status")}


async def finished_per_bucket(conn: asyncpg.Connection, *, window_s: int, buckets: int) -> list[Bucket]:
    """``buckets`` equal slices of the last ``window_s`` seconds, oldest first, with the tasks that
    finished in each and how many of them failed (failed, dead or timed out)."""
    step = window_s / buckets
    rows = await conn.fetch(
        """WITH edges AS (
               SELECT now() - make_interval(secs => $1) + make_interval(secs => $2 * i) AS start
               FROM generate_series(0, $3 - 1) AS i)
           SELECT e.start,
                  count(t.id) AS finished,
                  count(t.id) FILTER (WHERE t.status = ANY($4::text[])) AS failed
           FROM edges e
           LEFT JOIN tasks t ON t.finished_at >= e.start AND t.finished_at < e.start + make_interval(secs => $2)
           GROUP BY e.start ORDER BY e.start""",
        float(window_s), step, buckets, list(FAILED),
    )
    return [Bucket(r["start"], r["finished"], r["failed"]) for r in rows]
