"""Deletes spans older than the retention period from the built-in span store."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from aiops.settings import AiopsSettings
from aiops.traces import store
from control_plane.loops import LoopService

log = logging.getLogger("devart.span_retention")


class SpanRetention(LoopService):
    """Every ``interval_s``, deletes spans that started more than ``retention_days`` ago, in
    batches of ``retention_batch_size`` rows (each its own short statement)."""

    name = "span-retention"

    def __init__(self, pool: asyncpg.Pool, settings: AiopsSettings, *, interval_s: float) -> None:
        super().__init__(interval_s)
        self._pool = pool
        self._settings = settings
        self.deleted = 0
        """Spans deleted since the loop was made."""

    async def run_once(self) -> None:
        cutoff = datetime.now(UTC) - timedelta(days=self._settings.retention_days)
        async with self._pool.acquire() as conn:
            deleted = await store.delete_older_than(
                conn, cutoff=cutoff, batch_size=self._settings.retention_batch_size
            )
        self.deleted += deleted
        if deleted:
            log.info("deleted %d span(s) started before %s", deleted, cutoff.isoformat())
