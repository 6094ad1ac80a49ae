"""Sign-in with an API token, sign-out, and the console's own event stream."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from control_plane import identity
from control_plane.api import stream as api_stream
from control_plane.audit import audit
from control_plane.auth import READ
from dashboard.sessions import COOKIE, close_session, open_session
from dashboard.web import CP, ConsoleRoute, action, console_of, local_path, reader, remote, render

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
LOGIN_COOKIE = "devart_login"
"""Double-submit CSRF token of the sign-in form (there is no session to bind it to yet)."""
SigningOut = action(None)
EventReader = reader("stream_events")


def _login_page(request: Request, *, next_: str, error: str = "", status_code: int = 200) -> Response:
    nonce = secrets.token_urlsafe(24)
    response = render(request, None, "login.html", status_code=status_code, login_csrf=nonce, next=next_,
                      error=error)
    response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        path="/login", max_age=3600)
    return response


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    return _login_page(request, next_=local_path(next))


@router.post("/login")
async def login(
    request: Request, cp: CP,
    token: Annotated[str, Form(max_length=500)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected, csrf_token):
        return _login_page(request, next_=local_path(next), status_code=403,
                           error="the sign-in form expired or came from another site: try again")
    async with cp.pool.acquire() as conn:
        principal = await request.app.state.token_cache.authenticate(conn, token.strip()) if token.strip() else None
        if principal is None or not principal.can(READ):
            return _login_page(request, next_=local_path(next), status_code=401,
                               error="that token is not valid, revoked, or may not read (agent tokens cannot sign in)")
        async with conn.transaction():
            session_id = await open_session(conn, principal, ttl_s=console_of(request).settings.session_ttl_s,
                                            remote=remote(request))
            await identity.assume(conn, principal)  # the audit row is written as the user
            await audit(conn, actor=principal.name, action="console.sign_in", remote=remote(request))
    response = RedirectResponse(local_path(next), status_code=303)
    response.set_cookie(COOKIE, session_id, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        path="/", max_age=int(console_of(request).settings.session_ttl_s))
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request, cp: CP, user: SigningOut) -> Response:
    async with cp.pool.acquire() as conn, conn.transaction():
        await close_session(conn, user.session_id)
        await identity.assume(conn, user.principal)
        await audit(conn, actor=user.principal.name, action="console.sign_out", remote=remote(request))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/console/events")
async def events(request: Request, user: EventReader) -> Response:
    """The API's live event stream (GET /api/v1/events), authenticated by the session."""
    return await api_stream.stream_events(request.app.state.hub, user.principal)
