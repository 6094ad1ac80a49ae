"""Tokens (admins): the list without secrets, create one (its secret shown once), revoke one. A
revoked token's console sessions and streams end with it."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import field_validator

from control_plane.api import tokens as api_tokens
from control_plane.api.models import TokenCreate
from control_plane.auth import ROLES
from dashboard.web import Conn, ConsoleRoute, action, back, form_model, reader, remote, render

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
Lister = reader("list_tokens")
Creator = action("create_token")
Revoker = action("revoke_token")


class TokenForm(TokenCreate):
    """The create form: ``pools`` is one text field of pool ids separated by spaces or commas."""

    @field_validator("pools", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return value.replace(",", " ").split() if isinstance(value, str) else value


@router.get("/tokens")
async def token_list(request: Request, conn: Conn, who: Lister) -> Response:
    return render(request, who, "tokens.html", nav="tokens", tokens=await api_tokens.list_tokens(conn, who.principal),
                  roles=ROLES, created=None)


@router.post("/tokens")
async def create(request: Request, conn: Conn, who: Creator) -> Response:
    body = await form_model(request, TokenForm)
    created = await api_tokens.create(body, conn, who.principal, remote(request))
    # the secret is shown in this answer only (no redirect: a reload must not show it again)
    return render(request, who, "tokens.html", status_code=201, nav="tokens", roles=ROLES, created=created,
                  tokens=await api_tokens.list_tokens(conn, who.principal))


@router.post("/tokens/{token_id}/revoke")
async def revoke(token_id: UUID, request: Request, conn: Conn, who: Revoker) -> Response:
    await api_tokens.revoke(token_id, request, conn, who.principal, remote(request))
    return back("/tokens")
