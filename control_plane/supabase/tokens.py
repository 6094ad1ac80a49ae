"""Supabase access tokens (JWTs) as API bearer tokens.

A token is accepted when its signature checks out against the key configured for its algorithm
(HS256: ``DEVART_SUPABASE_JWT_SECRET``; RS256/ES256: the project's JWKS, chosen by ``kid``), it is
within ``exp``/``nbf`` (with ``DEVART_SUPABASE_JWT_LEEWAY_S``), carries the configured ``aud`` (and
``iss`` when set), says ``role: authenticated`` and names a user (``sub``). The devart role comes
from ``app_metadata.devart_role`` only: Supabase lets a user edit ``user_metadata`` themselves (the
``data`` of sign-up and ``updateUser``), while ``app_metadata`` is written only with the service
role key. A token without a devart role is refused with 403.

Each algorithm has one source of keys and no other: an HS256 token is never checked against a JWKS
key (the HS/RS confusion, where a public key is used as an HMAC secret), an RS256 token only against
an RSA key of the JWKS, an ES256 one only against an EC key; ``none`` and every other algorithm are
refused before anything is decoded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, cast
from uuid import UUID

import httpx
import jwt

from control_plane.auth import TOKEN_PREFIX, Principal, Role
from control_plane.errors import Forbidden, Unauthorized, Unavailable
from control_plane.supabase.settings import SupabaseSettings

log = logging.getLogger("devart.supabase")

JWT_ROLES: tuple[Role, ...] = ("admin", "supervisor", "ci", "viewer")
"""Roles a Supabase user may hold; ``agent`` stays with devart's own tokens (agents register with one)."""
ROLE_CLAIM = "devart_role"
"""The key under ``app_metadata`` that holds a user's devart role."""
_ASYMMETRIC = {"RS256": "RSA", "ES256": "EC"}
_FIELD = "Authorization"


def looks_like_jwt(token: str) -> bool:
    """A compact JWS (three dot-separated parts), as opposed to a devart token (``dvt_...``)."""
    return not token.startswith(TOKEN_PREFIX) and token.count(".") == 2


def _refused(reason: str) -> Unauthorized:
    return Unauthorized(f"Supabase access token refused: {reason}", field=_FIELD)


class _KeySet:
    """The project's JWKS, cached; fetched again when stale or, rate-limited, for an unknown ``kid``."""

    def __init__(self, url: str, http: httpx.AsyncClient, settings: SupabaseSettings) -> None:
        self._url = url
        self._http = http
        self._settings = settings
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK:
        age = time.monotonic() - self._fetched_at
        if kid not in self._keys or age > self._settings.jwks_cache_s:
            async with self._lock:  # concurrent requests wait for one fetch
                age = time.monotonic() - self._fetched_at
                due = age > self._settings.jwks_cache_s or (
                    kid not in self._keys and age >= self._settings.jwks_refresh_min_s)
                if due:
                    await self._fetch()
        found = self._keys.get(kid)
        if found is None:
            raise _refused(f"it is signed with key id {kid!r}, which the JWKS at {self._url} does not list")
        return found

    async def _fetch(self) -> None:
        try:
            response = await self._http.get(self._url, timeout=self._settings.jwks_timeout_s)
            response.raise_for_status()
            listed = response.json()["keys"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self._fetched_at = time.monotonic()  # a failing JWKS is asked again after jwks_refresh_min_s
            if self._keys:
                log.warning("cannot fetch the Supabase JWKS at %s (%s); keeping the keys fetched before",
                            self._url, exc)
                return
            raise Unavailable(f"cannot fetch the Supabase JWKS at {self._url}: {exc}") from exc
        keys: dict[str, jwt.PyJWK] = {}
        for entry in listed if isinstance(listed, list) else []:
            kid = entry.get("kid") if isinstance(entry, dict) else None
            if not isinstance(kid, str) or entry.get("kty") not in _ASYMMETRIC.values() or entry.get("use", "sig") != "sig":
                continue  # only named public signing keys; a symmetric key is never taken from a JWKS
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError as exc:
                log.warning("skipping JWKS key %r: %s", kid, exc)
                continue
            if key.algorithm_name in _ASYMMETRIC:
                keys[kid] = key
        self._keys = keys
        self._fetched_at = time.monotonic()
        log.info("fetched the Supabase JWKS at %s: key ids %s", self._url, sorted(keys))


class SupabaseTokens:
    """Verifies Supabase access tokens and turns them into devart principals."""

    def __init__(self, settings: SupabaseSettings, *, http: httpx.AsyncClient | None = None) -> None:
        if not settings.accepts_tokens:
            raise ValueError("neither DEVART_SUPABASE_JWT_SECRET nor DEVART_SUPABASE_JWKS_URL is set")
        self._settings = settings
        self._own_http = http is None
        self._http = http or httpx.AsyncClient()
        self._secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret is not None else None
        self._jwks = _KeySet(settings.jwks_url, self._http, settings) if settings.jwks_url else None

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    def _accepted(self) -> str:
        names = (["HS256"] if self._secret is not None else []) + (list(_ASYMMETRIC) if self._jwks else [])
        return ", ".join(names)

    async def _key(self, header: Mapping[str, Any]) -> Any:
        alg = header.get("alg")
        if alg == "HS256" and self._secret is not None:
            return self._secret
        if alg in _ASYMMETRIC and self._jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise _refused(f"an {alg} token must name its signing key (kid)")
            key = await self._jwks.key(kid)
            if key.algorithm_name != alg:
                raise _refused(f"key {kid!r} is an {key.algorithm_name} key, the token says {alg}")
            return key.key
        raise _refused(f"algorithm {alg!r} is not accepted here (accepted: {self._accepted()})")

    async def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``; :class:`Unauthorized` saying why it is refused."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _refused(f"not a JWT ({exc})") from exc
        key = await self._key(header)
        s = self._settings
        try:
            claims = jwt.decode(
                token, key, algorithms=[cast(str, header["alg"])], audience=s.jwt_audience, issuer=s.jwt_issuer,
                leeway=s.jwt_leeway_s, options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _refused("it has expired (exp)") from exc
        except jwt.ImmatureSignatureError as exc:
            raise _refused("it is not valid yet (nbf/iat)") from exc
        except jwt.InvalidSignatureError as exc:
            raise _refused("its signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise _refused(str(exc)) from exc
        if claims.get("role") != "authenticated":
            raise _refused(f"its role is {claims.get('role')!r}, not 'authenticated' (an API key is no user)")
        return claims

    async def authenticate(self, token: str) -> Principal:
        claims = await self.claims(token)
        try:
            user_id = UUID(str(claims["sub"]))
        except ValueError as exc:
            raise _refused("its sub is not a user id") from exc
        app_metadata = claims.get("app_metadata")
        role = app_metadata.get(ROLE_CLAIM) if isinstance(app_metadata, dict) else None
        if role not in JWT_ROLES:
            user_metadata = claims.get("user_metadata")
            ignored = isinstance(user_metadata, dict) and ROLE_CLAIM in user_metadata
            raise Forbidden(
                f"Supabase user {user_id} has no devart role: app_metadata.{ROLE_CLAIM} must be one of "
                f"{', '.join(JWT_ROLES)}, set by an admin with `devart supabase set-role`"
                + (f" (user_metadata.{ROLE_CLAIM} is ignored: users can edit it)" if ignored else "")
                + ("" if role is None else f", not {role!r}"),
                field=_FIELD,
            )
        name = claims.get("email") or str(user_id)
        return Principal(user_id, f"supabase:{name}", cast(Role, role), claims=claims)
