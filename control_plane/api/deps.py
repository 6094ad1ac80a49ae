"""Dependencies shared by the routers: the database, the caller, and permission checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, TypeVar

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from control_plane import identity
from control_plane.api.hub import EventHub
from control_plane.auth import Principal, TokenCache
from control_plane.errors import DomainError, Forbidden, Unauthorized
from control_plane.service import ControlPlane
from control_plane.settings import Settings
from control_plane.supabase.tokens import SupabaseTokens, looks_like_jwt

T = TypeVar("T")
_bearer = HTTPBearer(auto_error=False, description="an API token created with `devart token create`, or a Supabase "
                                                   "access token where DEVART_SUPABASE_JWT_SECRET or _JWKS_URL is set")


async def _control_plane(request: Request) -> ControlPlane:
    return request.app.state.control_plane


async def _settings(request: Request) -> Settings:
    return request.app.state.control_plane.settings


async def _hub(request: Request) -> EventHub:
    return request.app.state.hub


async def _connection(request: Request) -> AsyncIterator[asyncpg.Connection]:
    # The request's transaction, committed before the response is sent (scope="function" in DbConn),
    # rolled back by an error unless the route recorded its refusal (DomainError.recorded).
    # The caller's principal switches it to their identity (identity.assume); until then it is
    # devart_app, which may do nothing but authenticate.
    cp: ControlPlane = request.app.state.control_plane
    async with cp.pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            yield conn
        except BaseException as exc:
            if isinstance(exc, DomainError) and exc.recorded:
                await transaction.commit()
            else:
                await transaction.rollback()
            raise
        await transaction.commit()


async def _authenticate(
    request: Request, credentials: HTTPAuthorizationCredentials | None, conn: asyncpg.Connection | asyncpg.Pool
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)", field="Authorization")
    supabase: SupabaseTokens | None = request.app.state.supabase_tokens
    if supabase is not None and looks_like_jwt(credentials.credentials):
        return await supabase.authenticate(credentials.credentials)
    cache: TokenCache = request.app.state.token_cache
    principal = await cache.authenticate(conn, credentials.credentials)
    if principal is None:
        raise Unauthorized("invalid or revoked token", field="Authorization")
    return principal


async def _principal(
    request: Request, credentials: HTTPAuthorizationCredentials | None, conn: asyncpg.Connection
) -> Principal:
    # The token is checked on the request's own connection: a second one per request would let
    # concurrent requests exhaust the pool while each holds its first.
    principal = await _authenticate(request, credentials, conn)
    await identity.assume(conn, principal)
    return principal


async def _principal_outside_transaction(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    # A stream lives for minutes or hours: it borrows a connection for the check only, where a
    # request-scoped one would stay taken until the stream ends (seven streams starved the API);
    # and only when the token is not in the cache.
    cp: ControlPlane = request.app.state.control_plane
    return await _authenticate(request, credentials, cp.pool)


def _permit(principal: Principal, permission: str) -> Principal:
    if not principal.can(permission):
        raise Forbidden(f"role '{principal.role}' may not do this (needs {permission})")
    return principal


def _labelled(
    check: Callable[..., Awaitable[Principal]], permission: str, principal: Callable[..., Awaitable[Principal]]
) -> Callable[..., Awaitable[Principal]]:
    check.permission = permission  # type: ignore[attr-defined]  # read by the console (dashboard.permissions)
    check.principal = principal  # type: ignore[attr-defined]  # how it authenticates (tests/security/test_rls_api.py)
    return check


# Each check is a single dependency that authenticates and checks the permission (not a chain of
# dependencies): FastAPI's cost grows with every dependency it solves, and checks run on every request.
# The parameters are defaults, not Annotated: postponed annotations could not see the closures' variable.


def require(permission: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits callers whose role has ``permission``.

    Dependencies here are ``async`` although they do not await: FastAPI would run a plain ``def``
    in a worker thread, which costs more than the check itself.
    """

    async def check(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
        conn: asyncpg.Connection = Depends(_connection, scope="function"),  # noqa: B008
    ) -> Principal:
        return _permit(await _principal(request, credentials, conn), permission)

    return _labelled(check, permission, _principal)


def require_outside_transaction(permission: str) -> Callable[..., Awaitable[Principal]]:
    """:func:`require` for endpoints that hold no request transaction: streams (no database
    connection while streaming) and the single-task submit (written in a shared transaction)."""

    async def check(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> Principal:
        return _permit(await _principal_outside_transaction(request, credentials), permission)

    return _labelled(check, permission, _principal_outside_transaction)


async def retry_rollback(action: Callable[[], Awaitable[T]], attempts: int = 3) -> T:
    """Run ``action`` (one transaction) again when Postgres aborted it to break a deadlock or a
    serialization conflict, e.g. with an agent event locking the same task and run the other way round."""
    for attempt in range(attempts):
        try:
            return await action()
        except asyncpg.TransactionRollbackError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def remote_address(request: Request) -> str:
    return request.client.host if request.client else ""


ControlPlaneDep = Annotated[ControlPlane, Depends(_control_plane)]
SettingsDep = Annotated[Settings, Depends(_settings)]
HubDep = Annotated[EventHub, Depends(_hub)]
DbConn = Annotated[asyncpg.Connection, Depends(_connection, scope="function")]
Remote = Annotated[str, Depends(remote_address)]
