"""What every console view shares: the signed-in user, the CSRF and permission check of a write,
the database connection, templates, and errors rendered as pages.

The console is a second face of the API, not a second back end: views call the API's own route
functions and service modules, and a write is allowed exactly when the API route of the same
operation would allow it (:mod:`dashboard.permissions`).
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote, urlencode

import asyncpg
from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ValidationError

from control_plane import identity
from control_plane.auth import Principal
from control_plane.errors import DomainError, Forbidden, InvalidInput, http_status
from control_plane.service import ControlPlane
from dashboard.permissions import Permissions
from dashboard.sessions import COOKIE, CSRF_FIELD, CSRF_HEADER, csrf_matches, csrf_token, session_principal
from dashboard.settings import ConsoleSettings

M = TypeVar("M", bound=BaseModel)

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


class SignInRequired(Exception):
    """No valid session: pages redirect to the sign-in form, fragments and writes answer 401."""


@dataclass(frozen=True)
class User:
    """The signed-in supervisor: the API principal of the session's token, and the session itself."""

    principal: Principal
    session_id: str

    @property
    def csrf(self) -> str:
        return csrf_token(self.session_id)


@dataclass(frozen=True)
class Console:
    """The console's own state on ``app.state.console``."""

    settings: ConsoleSettings
    permissions: Permissions


def console_of(request: Request) -> Console:
    return request.app.state.console


def _control_plane(request: Request) -> ControlPlane:
    return request.app.state.control_plane


async def _user(request: Request) -> User:
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        raise SignInRequired
    conn: asyncpg.Connection | None = getattr(request.state, "console_conn", None)
    if conn is not None:  # a page: checked on the request's own connection, one round trip less
        principal = await session_principal(conn, session_id)
        if principal is not None:
            await identity.assume(conn, principal)
    else:  # a stream: holds no connection while it lasts
        async with _control_plane(request).pool.acquire() as conn:
            principal = await session_principal(conn, session_id)
    if principal is None:
        raise SignInRequired
    return User(principal, session_id)


async def _connection(request: Request) -> AsyncIterator[asyncpg.Connection]:
    """The request's connection, in a transaction that ``_user`` switches to the signed-in user's identity
    (as an API request's, docs/rls.md); views declare it before the user, so the session is checked on it."""
    async with _control_plane(request).pool.acquire() as conn, conn.transaction():
        request.state.console_conn = conn
        try:
            yield conn
        finally:
            request.state.console_conn = None


def _guard(operation_id: str | None, *, write: bool) -> Callable[..., Awaitable[User]]:
    async def check(request: Request, user: Annotated[User, Depends(_user)]) -> User:
        if write:
            presented = request.headers.get(CSRF_HEADER)
            if presented is None and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")
            ):
                presented = str((await request.form()).get(CSRF_FIELD) or "") or None
            if not csrf_matches(user.session_id, presented):
                raise Forbidden("this form has no valid CSRF token: reload the page and try again", field=CSRF_FIELD)
        if operation_id is not None:
            permission = console_of(request).permissions.of(operation_id)
            if not user.principal.can(permission):
                raise Forbidden(f"role '{user.principal.role}' may not do this (needs {permission})")
        return user

    return check


def action(operation_id: str | None) -> Any:
    """A write the API does as ``operation_id`` (None: a write of the console's own, like signing out):
    refused with 403 without the session's CSRF token (form field or header), and for a role that the
    API route would refuse."""
    return Annotated[User, Depends(_guard(operation_id, write=True))]


def reader(operation_id: str) -> Any:
    """A page or fragment showing what the API's ``operation_id`` returns, for the roles it admits."""
    return Annotated[User, Depends(_guard(operation_id, write=False))]


def remote(request: Request) -> str:
    return request.client.host if request.client else ""


CurrentUser = Annotated[User, Depends(_user)]
Conn = Annotated[asyncpg.Connection, Depends(_connection, scope="function")]
CP = Annotated[ControlPlane, Depends(_control_plane)]


def render(request: Request, user: User | None, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    console = console_of(request)

    def can(operation_id: str) -> bool:
        return user is not None and console.permissions.allowed(user.principal, operation_id)

    return templates.TemplateResponse(
        request, template, {"user": user, "can": can, "live_ms": console.settings.live_coalesce_ms, **context},
        status_code=status_code, headers={"Cache-Control": "no-store"},
    )


def local_path(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``/``: "//evil" or "https://evil" would send the
    supervisor elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def back(url: str) -> RedirectResponse:
    """After a write: see the page again (post/redirect/get)."""
    return RedirectResponse(url, status_code=303)


async def form_model(request: Request, model: type[M]) -> M:
    """The posted form as ``model`` (empty fields count as absent); a bad one is a 422 naming the field."""
    fields = {k: v for k, v in (await request.form()).items() if isinstance(v, str) and v != "" and k != CSRF_FIELD}
    for name, value in fields.items():
        if "\x00" in value:
            raise InvalidInput(f"form.{name} contains a NUL character, which cannot be stored", field=f"form.{name}")
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "form." + ".".join(str(part) for part in first["loc"])
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None


def query_model(request: Request, model: type[M]) -> M:
    """The page's query as ``model`` (empty fields count as absent); a bad one is a 422 naming the field."""
    try:
        return model.model_validate({k: v for k, v in request.query_params.items() if v != ""})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "query." + ".".join(str(part) for part in first["loc"])
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None


def url_with(path: str, **query: Any) -> str:
    kept = {k: v for k, v in query.items() if v not in (None, "")}
    return f"{path}?{urlencode(kept)}" if kept else path


def ago(value: datetime | None) -> str:
    if value is None:
        return ""
    seconds = (datetime.now(UTC) - value).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{max(seconds, 0):.0f} s ago"


templates.env.filters["ago"] = ago
templates.env.filters["urlpart"] = lambda value: quote(str(value), safe="")
templates.env.globals["url_with"] = url_with


class ConsoleRoute(APIRoute):
    """Console routes answer errors with a page (or a 401 for fragments), never with API JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                if request.method == "GET" and "HX-Request" not in request.headers and \
                        "text/event-stream" not in request.headers.get("accept", ""):
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return RedirectResponse(url_with("/login", next=target), status_code=303)
                return HTMLResponse("sign in first", status_code=401, headers={"Cache-Control": "no-store"})
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
                field = ".".join(str(part) for part in first["loc"])
                return await _error_page(request, InvalidInput(f"{field}: {first['msg']}", field=field))
            except DomainError as exc:
                return await _error_page(request, exc)

        return route


async def _error_page(request: Request, exc: DomainError) -> Response:
    user = None
    if (session_id := request.cookies.get(COOKIE)) is not None:
        async with _control_plane(request).pool.acquire() as conn:
            principal = await session_principal(conn, session_id)
        user = User(principal, session_id) if principal else None
    status = http_status(exc)
    if "HX-Request" in request.headers:
        return HTMLResponse(f"{status}: {html.escape(exc.message)}", status_code=status)
    return render(request, user, "error.html", status_code=status, error=exc, status=status)
