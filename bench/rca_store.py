"""The RCA worker's read of the span store, timed: part of every incident's analysis time.

An embedded Postgres (pgserver, in a temporary directory) holds a simulated incident window of
``spans`` spans and a baseline window of as many; the worker's role (``devart_service``, under row
level security) reads both windows at once, then ranks. Timed: the read as ``Span`` objects
(``store.spans_between``) and as a table of columns (``store.span_table_between``, what the worker
uses), alone and followed by the ranking, each best of ``runs``. CPU time is this process's only
(the database server's work shows in the wall time).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from aiops.rca.frame import ATTRIBUTES
from aiops.rca.ranking import analyze
from aiops.simulation import make_scenario
from aiops.traces import store
from control_plane.db import SERVICE_ROLE, create_pool
from schema.runner import migrate

_BATCH = 20_000


async def _best(run: Callable[[], Awaitable[object]], runs: int) -> tuple[float, float]:
    wall = cpu = float("inf")
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        await run()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu


async def _measure(uri: str, spans: int, runs: int) -> list[str]:
    scenario = make_scenario("web_shop", "cpu", 7, n_traces=-(-spans // 20), strip_status=False)
    conn = await asyncpg.connect(uri)
    try:
        await migrate(conn)
        everything = [*scenario.baseline, *scenario.incident]
        for i in range(0, len(everything), _BATCH):
            await store.insert_spans(conn, spans=everything[i : i + _BATCH])
        await conn.execute("ANALYZE spans")
    finally:
        await conn.close()
    windows = [
        (min(s.start_ns for s in window), max(s.start_ns for s in window) + 1)
        for window in (scenario.incident, scenario.baseline)
    ]
    pool = await create_pool(uri, role=SERVICE_ROLE, min_size=2, max_size=2, codecs=False)

    async def read(start_ns: int, end_ns: int, table: bool) -> object:
        async with pool.acquire() as c:
            if table:
                return await store.span_table_between(c, start_ns=start_ns, end_ns=end_ns, attributes=ATTRIBUTES)
            return await store.spans_between(c, start_ns=start_ns, end_ns=end_ns)

    async def both(table: bool) -> list[object]:
        return list(await asyncio.gather(*(read(lo, hi, table) for lo, hi in windows)))

    async def read_and_rank(table: bool) -> None:
        incident, baseline = await both(table)
        await asyncio.to_thread(analyze, incident, baseline)  # type: ignore[arg-type]

    load = os.getloadavg()[0]
    try:
        figures = {
            label: await _best(lambda t=table, f=f: f(t), runs)  # type: ignore[misc]
            for label, table, f in (
                ("read as Span objects", False, both),
                ("read as columns", True, both),
                ("read as Span objects, then rank", False, read_and_rank),
                ("read as columns, then rank (the worker)", True, read_and_rank),
            )
        }
    finally:
        await pool.close()
    lines = [
        f"- span store, both windows ({len(scenario.incident):,} + {len(scenario.baseline):,} spans) read at once "
        f"as devart_service, best of {runs}:"
    ]
    lines += [f"  - {label}: {wall:.3f} s wall, {cpu:.3f} s CPU in this process" for label, (wall, cpu) in figures.items()]
    lines.append(f"  - load average (1 min) before / after: {load:.2f} / {os.getloadavg()[0]:.2f}")
    return lines


def store_speed_lines(spans: int = 100_000, runs: int = 3) -> list[str]:
    """The printed figures of the span store read (about half a minute, most of it loading)."""
    import pgserver

    with tempfile.TemporaryDirectory(prefix="devart-rca-store-") as workdir:
        server = pgserver.get_server(Path(workdir) / "postgres", cleanup_mode="delete")
        try:
            return asyncio.run(_measure(server.get_uri(), spans, runs))
        finally:
            server.cleanup()
