"""Request latency with and without the per-request identity switch (row-level security).

    python -m bench.identity [--requests 400] [--rounds 8]

One control plane (no background loops) on an embedded pgserver (or ``--database-url``) serves two
apps on two ports in this process: the real one, where each request's transaction runs ``SET LOCAL
ROLE authenticated`` + the caller's claims as devart_app (row-level security applies), and the same
app with the request connection overridden to what it was before row-level security: a pool of the
owner's connections, no transaction around the request, no switch (FastAPI dependency overrides).
A ``ci`` token reads one task (``GET /api/v1/tasks/{id}``, its row, attempts and transitions) one
request at a time through aiohttp, alternating between the two apps round by round so both see the
same machine load; p50/p99 of each and their ratio are printed. A read, because both submit routes
write their tasks in transactions of their own (control_plane/submissions.py), which the override
does not reach.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import aiohttp
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bench.dispatch import _postgres
from bench.options import settings_parser
from bench.percentiles import p50_p99
from control_plane.api import deps
from control_plane.serving import serve_in_process


class IdentityBenchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVART_BENCH_", extra="ignore", cli_parse_args=False)

    amqp_url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/",
                          validation_alias=AliasChoices("AMQP_URL", "DEVART_BENCH_AMQP_URL"),
                          description="RabbitMQ the control plane connects to")
    database_url: str | None = Field(default=None, description="Postgres (a scratch database); unset = embedded pgserver")
    requests: int = Field(default=400, ge=10, description="reads per app, in total over the rounds")
    rounds: int = Field(default=8, ge=1, description="rounds; each app takes its turn in every round")


async def _reads(http: aiohttp.ClientSession, count: int, task_id: str) -> list[float]:
    took = []
    for _ in range(count):
        started = time.perf_counter()
        async with http.get(f"/api/v1/tasks/{task_id}") as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"read answered {response.status}: {await response.text()}")
        took.append((time.perf_counter() - started) * 1000)
    return took


async def _authenticated_only(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(deps._bearer)],
    conn: Annotated[Any, Depends(deps._connection, scope="function")],
) -> Any:
    return await deps._authenticate(request, credentials, conn)


def _without_identity_switch(cp: Any, owner_pool: Any) -> Any:
    """The app as it was before row-level security: requests on the owner's connections, no switch."""
    from control_plane.api.app import create_app

    app = create_app(control_plane=cp)

    async def connection() -> AsyncIterator[Any]:
        async with owner_pool.acquire() as conn:
            yield conn

    app.dependency_overrides[deps._connection] = connection
    app.dependency_overrides[deps._principal] = _authenticated_only
    return app



async def run(settings: IdentityBenchSettings) -> str:
    from agents.sdk.settings import BrokerSettings
    from control_plane.api.app import create_app
    from control_plane.auth import create_token
    from control_plane.db import connect, create_pool
    from control_plane.service import ControlPlane
    from control_plane.settings import Settings

    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    with tempfile.TemporaryDirectory(prefix="devart-bench-identity-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)  # pgserver runs Postgres as its own user when we are root
        async with _postgres(settings, workdir) as server, server.scratch("identity") as database_url:
            cp_settings = Settings(database_url=database_url, home=workdir / "home", embedded_broker=False,
                                   broker=BrokerSettings(amqp_url=settings.amqp_url, prefix=prefix, queue_expires_s=60))
            async with ControlPlane(cp_settings, workers=False) as cp:
                conn = await connect(database_url)
                try:
                    _, token = await create_token(conn, name=f"{prefix}ci", role="ci", created_by="bench")
                    owner = await conn.fetchval("SELECT current_user")
                finally:
                    await conn.close()
                owner_pool = await create_pool(database_url, role=owner, min_size=2,
                                               max_size=cp_settings.db_pool_max)
                headers = {"Authorization": f"Bearer {token}"}
                took: dict[str, list[float]] = {"switch": [], "none": []}
                try:
                    async with serve_in_process(create_app(control_plane=cp)) as with_switch, \
                            serve_in_process(_without_identity_switch(cp, owner_pool)) as without:
                        urls = {"switch": with_switch, "none": without}
                        async with aiohttp.ClientSession(base_url=with_switch, headers=headers) as client, \
                                client.post("/api/v1/tasks", json={"type": "bench-identity"}) as created:
                            if created.status != 201:
                                raise RuntimeError(f"submit answered {created.status}: {await created.text()}")
                            task_id = (await created.json())["id"]
                        for url in urls.values():  # warm-up: connections, caches, token cache
                            async with aiohttp.ClientSession(base_url=url, headers=headers) as warm:
                                await _reads(warm, 20, task_id)
                        per_round = max(1, settings.requests // settings.rounds)
                        for round_no in range(settings.rounds):
                            order = ("switch", "none") if round_no % 2 == 0 else ("none", "switch")
                            for name in order:
                                async with aiohttp.ClientSession(base_url=urls[name], headers=headers) as client:
                                    took[name] += await _reads(client, per_round, task_id)
                finally:
                    await owner_pool.close()
    s50, s99 = p50_p99(took["switch"])
    n50, n99 = p50_p99(took["none"])
    return "\n".join([
        f"GET /api/v1/tasks/{{id}} as a ci token, {len(took['switch'])} reads per app one at a time, "
        f"{settings.rounds} alternating rounds, no agent:",
        f"  without the identity switch (owner connection): p50 {n50:6.2f} ms   p99 {n99:6.2f} ms",
        f"  with it (devart_app -> authenticated + claims): p50 {s50:6.2f} ms   p99 {s99:6.2f} ms",
        f"  with / without: p50 {s50 / n50:.2f}x, p99 {s99 / n99:.2f}x",
    ])


def main(argv: list[str] | None = None) -> None:
    args = vars(settings_parser(IdentityBenchSettings, prog="python -m bench.identity", doc=__doc__).parse_args(argv))
    print(asyncio.run(run(IdentityBenchSettings(**args))))


if __name__ == "__main__":
    main()
