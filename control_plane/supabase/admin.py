"""Supabase Auth through supabase-py: the admin client (users and their devart role) and signing in.

Two clients, never one. :class:`SupabaseAdmin` holds the service role key and is never signed in
as anybody. Signing a user in (:func:`sign_in`) uses a client of its own, made with the anon key
and closed straight after. The reason: a supabase-py client that signs a user in switches itself
to that user. From then on it sends the user's access token on every data (PostgREST), storage and
Realtime call, so code still holding "the admin client" silently runs under the user's row-level
security (tests/control_plane/supabase/test_admin.py shows it).

The devart role lives in ``app_metadata.devart_role``, which only the service role can write;
``user_metadata`` is the user's own to edit and never grants anything (control_plane/supabase/tokens.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from supabase import AsyncClient, AsyncClientOptions, acreate_client
from supabase_auth.types import User

from control_plane.errors import InvalidInput, NotFound
from control_plane.supabase.settings import SupabaseSettings
from control_plane.supabase.tokens import JWT_ROLES, ROLE_CLAIM

_PAGE = 100


def _options() -> AsyncClientOptions:
    # Nothing to refresh or persist: these clients live for one command.
    return AsyncClientOptions(auto_refresh_token=False, persist_session=False)


@dataclass(frozen=True)
class SupabaseUser:
    id: UUID
    email: str | None
    devart_role: str | None
    created_at: str
    last_sign_in_at: str | None

    @classmethod
    def of(cls, user: User) -> SupabaseUser:
        role = user.app_metadata.get(ROLE_CLAIM)
        return cls(UUID(user.id), user.email, role if isinstance(role, str) else None, user.created_at.isoformat(),
                   user.last_sign_in_at.isoformat() if user.last_sign_in_at else None)

    def public(self) -> dict[str, Any]:
        return {"id": str(self.id), "email": self.email, "devart_role": self.devart_role,
                "created_at": self.created_at, "last_sign_in_at": self.last_sign_in_at}


def _role(role: str | None) -> str | None:
    if role is not None and role not in JWT_ROLES:
        raise InvalidInput(f"role must be one of {', '.join(JWT_ROLES)} (or none to remove it)", field="role")
    return role


class SupabaseAdmin:
    """``async with SupabaseAdmin(settings) as admin``: the Auth admin API with the service role key."""

    def __init__(self, settings: SupabaseSettings) -> None:
        if settings.url is None or settings.service_role_key is None:
            raise InvalidInput("set DEVART_SUPABASE_URL and DEVART_SUPABASE_SERVICE_ROLE_KEY (docs/supabase.md)",
                               field="DEVART_SUPABASE_SERVICE_ROLE_KEY")
        self._settings = settings
        self._client: AsyncClient | None = None

    async def __aenter__(self) -> SupabaseAdmin:
        assert self._settings.url is not None and self._settings.service_role_key is not None
        self._client = await acreate_client(self._settings.url, self._settings.service_role_key.get_secret_value(),
                                            _options())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.auth.close()  # the admin API shares the auth client's connections
            self._client = None

    @property
    def _admin(self) -> Any:
        if self._client is None:
            raise RuntimeError("SupabaseAdmin is used outside `async with`")
        return self._client.auth.admin

    async def users(self) -> list[SupabaseUser]:
        found: list[SupabaseUser] = []
        page = 1
        while True:
            batch = await self._admin.list_users(page=page, per_page=_PAGE)
            found += [SupabaseUser.of(u) for u in batch]
            if len(batch) < _PAGE:
                return found
            page += 1

    async def find(self, who: str) -> SupabaseUser:
        """The user with id or email ``who``."""
        try:
            user_id = UUID(who)
        except ValueError:
            user_id = None
        if user_id is not None:
            return SupabaseUser.of((await self._admin.get_user_by_id(str(user_id))).user)
        for user in await self.users():
            if user.email is not None and user.email.lower() == who.lower():
                return user
        raise NotFound(f"no Supabase user with email {who!r}", field="user")

    async def create_user(self, email: str, *, password: str | None, role: str | None) -> SupabaseUser:
        attributes: dict[str, Any] = {"email": email, "email_confirm": True}
        if password is not None:
            attributes["password"] = password
        if _role(role) is not None:
            attributes["app_metadata"] = {ROLE_CLAIM: role}
        return SupabaseUser.of((await self._admin.create_user(attributes)).user)

    async def set_role(self, user_id: UUID, role: str | None) -> SupabaseUser:
        """Set (or with None remove) the user's devart role; it reaches their next access token."""
        response = await self._admin.update_user_by_id(str(user_id), {"app_metadata": {ROLE_CLAIM: _role(role)}})
        return SupabaseUser.of(response.user)


@dataclass(frozen=True)
class SignedIn:
    access_token: str
    expires_at: int | None
    user: SupabaseUser


async def sign_in(settings: SupabaseSettings, email: str, password: str) -> SignedIn:
    """A user's session from email and password, through a client of its own (never the admin one)."""
    if settings.url is None or settings.anon_key is None:
        raise InvalidInput("set DEVART_SUPABASE_URL and DEVART_SUPABASE_ANON_KEY (docs/supabase.md)",
                           field="DEVART_SUPABASE_ANON_KEY")
    client = await acreate_client(settings.url, settings.anon_key, _options())
    try:
        response = await client.auth.sign_in_with_password({"email": email, "password": password})
    finally:
        await client.auth.close()
    session = response.session
    if session is None:
        raise InvalidInput("Supabase returned no session (is the email confirmed?)", field="email")
    return SignedIn(session.access_token, session.expires_at, SupabaseUser.of(session.user))
