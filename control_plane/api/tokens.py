"""/api/v1/tokens: admins create, list and revoke API tokens."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Request, status

from control_plane.api.deps import DbConn, Remote, require
from control_plane.api.models import TokenCreate, TokenCreated, TokenPublic
from control_plane.audit import audit
from control_plane.auth import MANAGE_TOKENS, Principal, create_token, revoke_token

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])
Admin = Annotated[Principal, Depends(require(MANAGE_TOKENS))]


@router.post("", response_model=TokenCreated, status_code=status.HTTP_201_CREATED, operation_id="create_token",
             summary="Create a token (the secret is shown once)")
async def create(body: TokenCreate, conn: DbConn, who: Admin, remote: Remote) -> TokenCreated:
    async with conn.transaction():
        token_id, token = await create_token(conn, name=body.name, role=body.role, created_by=who.name,
                                             pools=body.pools)
        await audit(conn, actor=who.name, action="token.create", target=str(token_id),
                    detail={"name": body.name, "role": body.role, "pools": body.pools}, remote=remote)
    return TokenCreated(id=token_id, name=body.name, role=body.role, pools=body.pools, token=token)


@router.get("", response_model=list[TokenPublic], operation_id="list_tokens", summary="Tokens (never their secrets)")
async def list_tokens(conn: DbConn, _: Admin) -> list[TokenPublic]:
    rows = await conn.fetch(
        "SELECT id, name, role, pools, created_at, created_by, revoked_at, last_used_at FROM api_tokens ORDER BY created_at"
    )
    return [TokenPublic.model_validate(dict(r)) for r in rows]


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT, operation_id="revoke_token",
               summary="Revoke a token")
async def revoke(token_id: UUID, request: Request, conn: DbConn, who: Admin, remote: Remote) -> None:
    async with conn.transaction():
        await revoke_token(conn, token_id)
        await audit(conn, actor=who.name, action="token.revoke", target=str(token_id), remote=remote)
    request.app.state.token_cache.forget()
    request.app.state.hub.revoke(token_id)  # its open streams end now (other processes: within seconds)
