"""Server-side render time of the console's task list over 10,000 tasks.

    python -m bench.console [--tasks 10000] [--requests 300]

A control plane (embedded pgserver or ``--database-url``, the RabbitMQ at ``AMQP_URL``) gets
``--tasks`` tasks through ``POST /api/v1/tasks/batch`` (no agent runs: they stay pending). The app is
then called in-process through httpx's ASGI transport, so the time measured is the server's own (routing,
session lookup, query, template) without a network in between. Each request is made ``--requests``
times, one at a time, by a signed-in viewer:

- ``GET /tasks``: the page (50 rows, filters, navigation);
- ``GET /tasks/rows``: the fragment the live list swaps in after a change;
- ``GET /tasks?type=...``: the page filtered to a type that 1 % of the tasks have;
- ``GET /tasks?cursor=...``: the page 100 pages deep;
- the peer, in the same run: ``GET /api/v1/tasks?limit=50``, the API's JSON of the same rows.

It prints p50 and p99 in milliseconds for each, and each p50 as a ratio to the API's.
"""

from __future__ import annotations

import asyncio
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.sdk.settings import BrokerSettings
from bench.options import settings_parser
from bench.percentiles import p50_p99
from control_plane.api.app import create_app
from control_plane.auth import create_token
from control_plane.service import ControlPlane
from control_plane.settings import Settings


class ConsoleBenchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVART_BENCH_", extra="ignore", cli_parse_args=False)

    amqp_url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/",
                          validation_alias=AliasChoices("AMQP_URL", "DEVART_BENCH_AMQP_URL"),
                          description="RabbitMQ the control plane uses")
    database_url: str | None = Field(default=None, description="Postgres (a scratch database); unset = embedded pgserver")
    tasks: int = Field(default=10_000, ge=100, description="tasks in the list")
    requests: int = Field(default=300, ge=10, description="times each page is asked for")


async def _seed(api: httpx.AsyncClient, count: int) -> None:
    batch = 500
    for start in range(0, count, batch):
        tasks = [{"type": "rare" if (start + i) % 100 == 0 else "build", "requires": ["nobody"], "input": {"n": start + i}}
                 for i in range(min(batch, count - start))]
        response = await api.post("/api/v1/tasks/batch", json={"tasks": tasks})
        if response.status_code != 201:
            raise RuntimeError(f"seeding answered {response.status_code}: {response.text}")


async def _sign_in(console: httpx.AsyncClient, token: str) -> None:
    form = await console.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf is not None
    answer = await console.post("/login", data={"token": token, "csrf_token": csrf[1], "next": "/tasks"})
    if answer.status_code != 303:
        raise RuntimeError(f"sign-in answered {answer.status_code}: {answer.text[:300]}")


async def _time(client: httpx.AsyncClient, path: str, n: int) -> np.ndarray:
    took = []
    for _ in range(n):
        started = time.perf_counter()
        response = await client.get(path)
        took.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:300]}")
    return np.array(took)


async def _cursor_deep(api: httpx.AsyncClient, pages: int) -> str:
    cursor = ""
    for _ in range(pages):
        cursor = (await api.get("/api/v1/tasks", params={"limit": 50, **({"cursor": cursor} if cursor else {})})
                  ).json()["next_cursor"]
    return cursor


async def run(settings: ConsoleBenchSettings) -> None:
    with tempfile.TemporaryDirectory(prefix="devart-bench-console-") as workdir:
        database_url, server = settings.database_url, None
        if database_url is None:
            import pgserver

            server = await asyncio.to_thread(pgserver.get_server, Path(workdir) / "postgres", cleanup_mode="delete")
            database_url = server.get_uri()
        try:
            await _measure(settings, database_url, Path(workdir))
        finally:
            if server is not None:
                await asyncio.to_thread(server.cleanup)


async def _measure(settings: ConsoleBenchSettings, database_url: str, home: Path) -> None:
    broker = BrokerSettings(amqp_url=settings.amqp_url, prefix=f"bench-console-{uuid.uuid4().hex[:8]}.")
    plane_settings = Settings(database_url=database_url, broker=broker, embedded_broker=False, home=home)
    async with ControlPlane(plane_settings) as cp:
        app = create_app(control_plane=cp)
        async with app.router.lifespan_context(app):
            async with cp.pool.acquire() as conn:
                _, admin_token = await create_token(conn, name="bench-admin", role="admin", created_by="bench")
                _, viewer_token = await create_token(conn, name="bench-viewer", role="viewer", created_by="bench")
            transport = httpx.ASGITransport(app=app)
            base = "http://console.bench"
            async with httpx.AsyncClient(transport=transport, base_url=base,
                                         headers={"Authorization": f"Bearer {admin_token}"}) as admin, \
                    httpx.AsyncClient(transport=transport, base_url=base,
                                      headers={"Authorization": f"Bearer {viewer_token}"}) as api, \
                    httpx.AsyncClient(transport=transport, base_url=base) as console:
                began = time.perf_counter()
                await _seed(admin, settings.tasks)
                print(f"seeded {settings.tasks} tasks in {time.perf_counter() - began:.1f} s")
                await _sign_in(console, viewer_token)
                deep = await _cursor_deep(api, min(100, settings.tasks // 50 - 1))
                cases = [
                    ("API JSON  GET /api/v1/tasks?limit=50 (peer)", api, "/api/v1/tasks?limit=50"),
                    ("console   GET /tasks", console, "/tasks"),
                    ("console   GET /tasks/rows (live fragment)", console, "/tasks/rows"),
                    ("console   GET /tasks?type=rare (1 % of tasks)", console, "/tasks?type=rare"),
                    ("console   GET /tasks?cursor=<100 pages deep>", console, f"/tasks?cursor={deep}"),
                ]
                for _, client, path in cases:  # warm-up: prepared statements, template compilation
                    await _time(client, path, 5)
                results = {label: await _time(client, path, settings.requests) for label, client, path in cases}
    peer = float(np.percentile(results[cases[0][0]], 50))
    print(f"\n{settings.tasks} tasks, {settings.requests} requests each, one at a time, in-process (ASGI)")
    print(f"{'request':<50} {'p50 ms':>8} {'p99 ms':>8} {'p50 / API':>10}")
    for label, took in results.items():
        p50, p99 = p50_p99(took)
        print(f"{label:<50} {p50:>8.2f} {p99:>8.2f} {p50 / peer:>9.2f}x")


def main(argv: list[str] | None = None) -> int:
    args = vars(settings_parser(ConsoleBenchSettings, prog="python -m bench.console", doc=__doc__).parse_args(argv))
    asyncio.run(run(ConsoleBenchSettings(**args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
