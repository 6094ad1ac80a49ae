"""POST /api/v1/github/webhook: GitHub's deliveries, verified and stored before the answer.

The order of the checks is the order of trust: the size (413 naming the limit) before anything
is read whole, the signature (401, nothing stored) before anything is parsed, then the headers
and the JSON. A verified delivery is stored and answered 202; the work happens in the delivery
processor, so GitHub's 10 s are never at stake.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, status

from control_plane.api.deps import ControlPlaneDep
from control_plane.errors import InvalidInput, NotFound, PayloadTooLarge, Unauthorized, UnsupportedMediaType
from control_plane.github.webhooks import record, verify

WEBHOOK_PATH = "/api/v1/github/webhook"
router = APIRouter(tags=["github"])


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
    async with cp.pool.acquire() as conn, conn.transaction():
        stored = await record(conn, delivery, event, payload)
    return {"delivery": delivery, "event": event, "duplicate": not stored}
