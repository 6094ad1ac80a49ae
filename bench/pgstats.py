"""What a load costs Postgres per task: WAL bytes, commits, notifications, rows written per table.

WAL comes from ``pg_current_wal_lsn()`` (exact); the rest from Postgres's cumulative statistics,
which a backend flushes at most once a second and an idle one within ten seconds (Postgres 16), so
:meth:`PgCounter.snapshot` waits that long first: the figures are of everything since the last
snapshot, the load and whatever else ran on the database.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg

_SETTLE_S = 11.0
_CHANNELS = ("devart_events", "devart_outbox", "devart_logs")
_TABLES = """
SELECT s.relname, s.n_tup_ins, s.n_tup_upd, s.n_tup_hot_upd, s.n_tup_del,
       (SELECT count(*) FROM pg_index i WHERE i.indrelid = s.relid) AS indexes,
       pg_indexes_size(s.relid) AS index_bytes
FROM pg_stat_user_tables s
"""


@dataclass
class _Snapshot:
    wal: int
    commits: int
    notifications: int
    tables: dict[str, asyncpg.Record] = field(default_factory=dict)


class PgCounter:
    """Counts one database's writes between snapshots (listens to devart's channels to count NOTIFYs)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._notifications = 0

    async def start(self) -> None:
        for channel in _CHANNELS:
            await self._conn.add_listener(channel, self._count)

    async def stop(self) -> None:
        for channel in _CHANNELS:
            await self._conn.remove_listener(channel, self._count)

    def _count(self, *_: object) -> None:
        self._notifications += 1

    async def snapshot(self) -> _Snapshot:
        await asyncio.sleep(_SETTLE_S)
        wal = await self._conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        commits = await self._conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        tables = {r["relname"]: r for r in await self._conn.fetch(_TABLES)}
        return _Snapshot(int(wal), commits, self._notifications, tables)


def per_task(before: _Snapshot, after: _Snapshot, tasks: int) -> list[str]:
    """Report lines: totals per task, then each table written to (rows per task; HOT share of updates)."""
    lines = [f"  WAL {(after.wal - before.wal) / tasks:,.0f} bytes, {(after.commits - before.commits) / tasks:.2f} "
             f"commits, {(after.notifications - before.notifications) / tasks:.2f} notifications "
             f"({', '.join(_CHANNELS)})",
             f"  {'table':<22}{'ins':>7}{'upd':>7}{'hot':>7}{'del':>7}{'indexes':>9}{'index MB':>10}"]
    for name, row in sorted(after.tables.items()):
        old = before.tables.get(name)
        delta = [row[k] - (old[k] if old else 0) for k in ("n_tup_ins", "n_tup_upd", "n_tup_hot_upd", "n_tup_del")]
        if any(delta):
            ins, upd, hot, dele = (d / tasks for d in delta)
            lines.append(f"  {name:<22}{ins:>7.2f}{upd:>7.2f}{hot:>7.2f}{dele:>7.2f}{row['indexes']:>9}"
                         f"{row['index_bytes'] / 2**20:>10.2f}")
    return lines
