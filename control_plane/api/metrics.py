"""GET /metrics: Prometheus text format, for any token that may read (scrape with a viewer token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from control_plane.api.deps import ControlPlaneDep, DbConn, require
from control_plane.auth import READ, Principal
from control_plane.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])
Reader = Annotated[Principal, Depends(require(READ))]


@router.get("/metrics", operation_id="metrics", summary="Prometheus metrics (text exposition format)",
            response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(conn: DbConn, cp: ControlPlaneDep, _: Reader) -> Response:
    return Response(await cp.prometheus.render(conn), media_type=CONTENT_TYPE)
