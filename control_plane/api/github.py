"""POST /api/v1/github/webhook: GitHub's deliveries, verified and stored before the answer;
GET /api/v1/github/deliveries: what became of each.

The order of the checks is the order of trust: the size (413 naming the limit) before anything
is read whole, the signature (401, nothing stored) before anything is parsed, then the headers
and the JSON. A verified delivery is stored and answered 202; the work happens in the delivery
processor, so GitHub's 10 s are never at stake.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request, status
from pydantic import BaseModel, Field

from control_plane.api.deps import ControlPlaneDep, DbConn, require
from control_plane.auth import READ, Principal
from control_plane.errors import InvalidInput, NotFound, PayloadTooLarge, Unauthorized, UnsupportedMediaType
from control_plane.github.webhooks import list_deliveries, record, verify

WEBHOOK_PATH = "/api/v1/github/webhook"
router = APIRouter(tags=["github"])
Reader = Annotated[Principal, Depends(require(READ))]


class DeliveryPublic(BaseModel):
    delivery_id: str = Field(description="GitHub's X-GitHub-Delivery")
    event: str
    action: str | None
    repo: str | None
    installation_id: int | None
    state: Literal["received", "done"] = Field(description="received: stored, not processed yet")
    outcome: str = Field(description="what the delivery led to: started runs, ignored and why, no trigger, error")
    runs: list[UUID] = Field(description="the workflow runs it started")
    duplicates: int = Field(description="times GitHub delivered it again (answered, nothing done)")
    received_at: datetime
    processed_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryPublic] = Field(description="newest first")
    next_before: datetime | None = Field(description="pass as `before` for the next page; null at the end")


async def _body(request: Request, limit: int) -> bytes:
    too_large = PayloadTooLarge(f"webhook body is larger than DEVART_GITHUB_MAX_WEBHOOK_BYTES ({limit} bytes)",
                                field="body")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


@router.post(WEBHOOK_PATH, status_code=status.HTTP_202_ACCEPTED, operation_id="github_webhook",
             summary="A GitHub webhook delivery (signed with X-Hub-Signature-256); stored, then processed")
async def github_webhook(request: Request, cp: ControlPlaneDep) -> dict[str, Any]:
    settings = cp.github
    if not settings.enabled:
        raise NotFound("GitHub webhooks are off: DEVART_GITHUB_WEBHOOK_SECRETS is not set")
    body = await _body(request, settings.max_webhook_bytes)
    if not verify(body, request.headers.get("x-hub-signature-256"), settings.webhook_secrets):
        raise Unauthorized("X-Hub-Signature-256 is missing or does not match the body under any webhook secret",
                           field="X-Hub-Signature-256")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(f"set the webhook's content type to application/json, not {media or 'none'}",
                                   field="Content-Type")
    event = request.headers.get("x-github-event", "")
    delivery = request.headers.get("x-github-delivery", "")
    for header, value in (("X-GitHub-Event", event), ("X-GitHub-Delivery", delivery)):
        if not value or len(value) > 100:
            raise InvalidInput(f"{header} must be set (at most 100 characters)", field=header)
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}", field="body") from None
    if not isinstance(payload, dict):
        raise InvalidInput("body must be a JSON object", field="body")
    # verified by its signature, not a token: stored as the background services are (devart_service)
    async with cp.loops_pool.acquire() as conn, conn.transaction():
        stored = await record(conn, delivery, event, payload)
    return {"delivery": delivery, "event": event, "duplicate": not stored}


@router.get("/api/v1/github/deliveries", response_model=DeliveryPage, operation_id="list_github_deliveries",
            summary="GitHub deliveries received, newest first, with what each led to (payloads are not shown)")
async def github_deliveries(
    conn: DbConn, _: Reader,
    event: Annotated[str | None, Query(max_length=100)] = None,
    repo: Annotated[str | None, Query(max_length=200)] = None,
    before: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DeliveryPage:
    rows = await list_deliveries(conn, event=event, repo=repo, before=before, limit=limit + 1)
    items = [DeliveryPublic.model_validate(dict(r)) for r in rows[:limit]]
    return DeliveryPage(items=items, next_before=items[-1].received_at if len(rows) > limit else None)
