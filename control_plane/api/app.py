"""The FastAPI application factory; its lifespan owns the control plane's components."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import dashboard
from agents.sdk import eventloop
from control_plane.api import (
    agents,
    approvals,
    changes,
    dead_letters,
    github,
    health,
    incidents,
    metrics,
    notifications,
    rca,
    remediations,
    stream,
    task_types,
    tasks,
    tokens,
    traces,
    workflows,
)
from control_plane.api.hub import EventHub
from control_plane.api.sse import SERVER_SEND
from control_plane.api.text import unstorable_text_refusal
from control_plane.auth import TokenCache
from control_plane.db import DATABASE_UNAVAILABLE_ERRORS, database_unavailable
from control_plane.errors import DomainError, http_status
from control_plane.service import ControlPlane
from control_plane.settings import Settings
from control_plane.supabase.tokens import SupabaseTokens
from control_plane.telemetry import RequestSpans

log = logging.getLogger("devart.api")

_CODES = {404: "not_found", 409: "conflict", 422: "invalid_input", 403: "forbidden", 401: "unauthorized",
          413: "too_large", 400: "bad_request", 429: "too_many_requests", 503: "unavailable", 405: "method_not_allowed", 415: "unsupported_media_type"}


def _error(status: int, message: str, *, field: str | None = None, errors: list[dict[str, Any]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"status": status, "code": _CODES.get(status, "error"), "message": message, "field": field,
            "errors": errors or []}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    status = http_status(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _error(status, exc.message, field=exc.field, headers=headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": _field(e["loc"]), "message": e["msg"], "type": e["type"]} for e in exc.errors()
    ]
    first = errors[0] if errors else {"field": None, "message": "invalid request"}
    if first.get("type") == "json_invalid":
        message = f"request body is not valid JSON: {first['message']}"
    else:
        message = f"{first['field']}: {first['message']}"
    return _error(422, message, field=first["field"], errors=errors)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _unstorable_text(_: Request, exc: Exception) -> JSONResponse:
    """The last line of defence behind ``control_plane.api.text``: text Postgres refused."""
    return _error(422, f"the request contains text that cannot be stored: {exc}")


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database cannot be reached or a connection died under the request: its transaction did
    not commit, or (lost at COMMIT) may have, so the client retries, with its Idempotency-Key."""
    if not database_unavailable(exc):
        raise exc  # an InterfaceError of another kind: a bug, answered as one
    log.warning("%s %s: database unavailable: %r", request.method, request.url.path, exc)
    retry_after = request.app.state.control_plane.settings.db_retry_after_s
    return _error(503, "the database is unavailable (unreachable, or the connection was lost); nothing was changed "
                       "unless the connection was lost at commit: retry, with the same Idempotency-Key for a create",
                  headers={"Retry-After": str(retry_after)})


async def _database_refused(_: Request, exc: Exception) -> JSONResponse:
    """Row-level security or a missing grant refused the request's statement (docs/rls.md)."""
    return _error(403, f"the database refused this for your role: {exc}")


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt
        """Paths that enforce a limit of their own (the OTLP receiver)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error(413, f"request body is larger than {self.max_bytes} bytes", field="body")
        await response(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _operation_id(route: APIRoute) -> str:
    return route.name


class _API(FastAPI):
    """The API. It keeps the server's own ``send`` in the scope: an event stream's chunks are
    written straight to its connection (control_plane/api/hub.py), past the middleware."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[SERVER_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, control_plane: ControlPlane | None = None) -> FastAPI:
    """Build the API. Without ``control_plane`` the lifespan creates and owns one from ``settings``."""
    settings = settings or (control_plane.settings if control_plane else Settings())
    raw_body_paths = frozenset({traces.OTLP_TRACES_PATH, github.WEBHOOK_PATH})  # they bound and decode their own bodies

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if settings.supabase.accepts_tokens:
                app.state.supabase_tokens = SupabaseTokens(settings.supabase)
                stack.push_async_callback(app.state.supabase_tokens.aclose)
            cp = control_plane or await stack.enter_async_context(ControlPlane(settings))
            app.state.control_plane = cp
            await stack.enter_async_context(_per_process(app, cp))
            yield

    app = _API(
        title="devart",
        version="0.1.0",
        description="Control plane of devart: tasks, agents, pools and live events.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        # RequestSpans makes the server span; FastAPI's own spans per dependency, endpoint and
        # serialization would triple the spans of every request for little insight. Its HTTP metrics
        # and logs are off too (docs/observability.md: no request path pays for metrics): with all
        # four off FastAPI skips its telemetry wrapper, which otherwise runs on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        dependencies=[Depends(unstorable_text_refusal(raw_body_paths))],
    )
    app.state.token_cache = TokenCache()
    app.state.supabase_tokens = None  # the lifespan sets it where Supabase access tokens are accepted
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, exempt=raw_body_paths)
    app.add_middleware(RequestSpans, untraced=frozenset({traces.OTLP_TRACES_PATH}))
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(asyncpg.UntranslatableCharacterError, _unstorable_text)
    app.add_exception_handler(asyncpg.CharacterNotInRepertoireError, _unstorable_text)
    app.add_exception_handler(asyncpg.InsufficientPrivilegeError, _database_refused)
    for lost in DATABASE_UNAVAILABLE_ERRORS:
        app.add_exception_handler(lost, _database_unavailable)
    for module in (traces, github, health, metrics, tasks, task_types, agents, tokens, stream, rca, incidents, changes,
                   approvals, dead_letters, workflows, notifications, remediations):
        app.include_router(module.router)
    dashboard.install(app)
    return app


@asynccontextmanager
async def _per_process(app: FastAPI, cp: ControlPlane) -> AsyncIterator[None]:
    """The API process's own shared parts: the event hub and the OTLP decode slots."""
    app.state.otlp_slots = traces.DecodeSlots(cp.aiops.otlp_max_concurrent_decodes)
    hub = EventHub(cp.loops_pool, cp.settings, requests_pool=cp.pool)
    await hub.listen()
    hub.start()
    app.state.hub = hub
    eventloop.settle_collector()
    try:
        yield
    finally:
        await hub.stop()
