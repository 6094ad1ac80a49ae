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


async def _connection(cp: Annotated[ControlPlane, Depends(_control_plane)]) -> AsyncIterator[asyncpg.Connection]:
    # The request's transaction, committed before the response is sent (scope="function" in DbConn),
    # rolled back by an error unless the route recorded its refusal (DomainError.recorded).
    # The caller's principal switches it to their identity (identity.assume); until then it is
    # devart_app, which may do nothing but authenticate.
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
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    conn: Annotated[asyncpg.Connection, Depends(_connection, scope="function")],
) -> Principal:
    # The token is checked on the request's own connection: a second one per request would let
    # concurrent requests exhaust the pool while each holds its first.
    principal = await _authenticate(request, credentials, conn)
    await identity.assume(conn, principal)
    return principal


async def _principal_outside_transaction(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cp: Annotated[ControlPlane, Depends(_control_plane)],
) -> Principal:
    # A stream lives for minutes or hours: it borrows a connection for the check only, where a
    # request-scoped one would stay taken until the stream ends (seven streams starved the API);
    # and only when the token is not in the cache.
    return await _authenticate(request, credentials, cp.pool)


def _permission_check(
    permission: str, principal_dependency: Callable[..., Awaitable[Principal]]
) -> Callable[[Principal], Awaitable[Principal]]:
    # a default, not Annotated: postponed annotations could not see this closure's variable
    async def check(principal: Principal = Depends(principal_dependency)) -> Principal:  # noqa: B008
        if not principal.can(permission):
            raise Forbidden(f"role '{principal.role}' may not do this (needs {permission})")
        return principal

    check.permission = permission  # type: ignore[attr-defined]  # read by the console (dashboard.permissions)
    return check


def require(permission: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that admits callers whose role has ``permission``.

    Dependencies here are ``async`` although they do not await: FastAPI would run a plain ``def``
    in a worker thread, which costs more than the check itself.
    """
    return _permission_check(permission, _principal)


def require_outside_transaction(permission: str) -> Callable[[Principal], Awaitable[Principal]]:
    """:func:`require` for endpoints that hold no request transaction: streams (no database
    connection while streaming) and the single-task submit (written in a shared transaction)."""
    return _permission_check(permission, _principal_outside_transaction)


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
