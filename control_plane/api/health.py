"""/healthz (the process answers) and /readyz (the database and the broker answer). No auth."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from control_plane.api.deps import ControlPlaneDep

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", operation_id="readyz", summary="Readiness: database and broker reachable")
async def readyz(cp: ControlPlaneDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2.0), cp.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # whatever the failure, the answer is 'not ready', with its name
        checks["database"] = f"unavailable: {type(exc).__name__}"
    connection = cp.connection
    checks["broker"] = "ok" if connection.connected.is_set() and not connection.is_closed else "unavailable"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)
