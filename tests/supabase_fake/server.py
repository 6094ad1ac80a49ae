"""A local Supabase Auth (GoTrue) server speaking its wire format, for supabase-py to talk to.

Under ``/auth/v1`` (``/rest/v1`` only records who a data request ran as): ``POST /token?grant_type=password|refresh_token`` (a session: access token,
refresh token, user), ``GET|PUT /user`` (the signed-in user; PUT merges ``data`` into
``user_metadata``, as a user may do to themselves), ``GET /.well-known/jwks.json`` (the public
signing keys), and the admin API ``/admin/users`` (list with ``page``/``per_page``, create) and
``/admin/users/{id}`` (get, update merging ``app_metadata``/``user_metadata`` with null deleting a
key, delete), which answers only the service role key. Errors are GoTrue's ``{"code", "error_code",
"msg"}`` bodies, or ``{"code": <error code>, "message"}`` for clients that send
``X-Supabase-Api-Version: 2024-01-01`` (supabase-py does), with that header on every answer. Access tokens carry GoTrue's claims and
are signed HS256 with the project secret or, after :meth:`FakeSupabaseAuth.use_asymmetric`, RS256
or ES256 with a key named by ``kid`` that the JWKS lists.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.loopback import LoopbackServer

API_VERSION = "2024-01-01"


class AuthError(Exception):
    def __init__(self, status: int, error_code: str, msg: str) -> None:
        super().__init__(msg)
        self.status, self.error_code, self.msg = status, error_code, msg


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        jwk = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig", "key_ops": ["verify"]}


@dataclass
class FakeSupabaseAuth:
    url: str = "http://127.0.0.1"
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(40))
    service_role_key: str = field(default_factory=lambda: "sb_secret_" + secrets.token_urlsafe(24))
    anon_key: str = field(default_factory=lambda: "sb_publishable_" + secrets.token_urlsafe(24))
    expires_in: int = 3600
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    keys: list[SigningKey] = field(default_factory=list)
    """Keys the JWKS lists; the last one signs (after :meth:`use_asymmetric`)."""
    signing: str = "HS256"
    jwks_fetches: int = 0
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    """(method, path, Authorization header) of every request."""

    # --- what tests do
    @property
    def issuer(self) -> str:
        return f"{self.url}/auth/v1"

    def use_asymmetric(self, alg: str = "RS256") -> SigningKey:
        """Sign from now on with a new ``alg`` key, listed in the JWKS beside the earlier ones (rotation)."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256" \
            else ec.generate_private_key(ec.SECP256R1())
        key = SigningKey(kid=uuid.uuid4().hex[:12], alg=alg, private=private)
        self.keys.append(key)
        self.signing = alg
        return key

    def access_token(self, user: dict[str, Any], **overrides: Any) -> str:
        """The access token GoTrue would issue for ``user`` now; ``overrides`` replace claims."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": "authenticated", "exp": now + self.expires_in, "iat": now, "iss": self.issuer,
            "sub": user["id"], "email": user.get("email") or "", "phone": user.get("phone") or "",
            "app_metadata": user["app_metadata"], "user_metadata": user["user_metadata"],
            "role": user.get("role") or "authenticated", "aal": "aal1",
            "amr": [{"method": "password", "timestamp": now}], "session_id": str(uuid.uuid4()),
            "is_anonymous": False,
        }
        claims.update(overrides)
        if self.signing == "HS256":
            return jwt.encode(claims, self.jwt_secret, algorithm="HS256", headers={"typ": "JWT"})
        key = self.keys[-1]
        return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": "JWT"})

    def add_user(self, email: str, password: str | None = None, *, app_metadata: dict[str, Any] | None = None,
                 user_metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        if any(u.get("email") == email for u in self.users.values()):
            raise AuthError(422, "email_exists", "A user with this email address has already been registered")
        now = _now_iso()
        user_id = str(uuid.uuid4())
        user = {
            "id": user_id, "aud": "authenticated", "role": "authenticated", "email": email, "phone": "",
            "email_confirmed_at": now, "confirmed_at": now, "last_sign_in_at": None,
            "app_metadata": {"provider": "email", "providers": ["email"], **(app_metadata or {})},
            "user_metadata": dict(user_metadata or {}),
            "identities": [{
                "identity_id": str(uuid.uuid4()), "id": user_id, "user_id": user_id,
                "identity_data": {"email": email, "email_verified": True, "sub": user_id},
                "provider": "email", "last_sign_in_at": now, "created_at": now, "updated_at": now, "email": email,
            }],
            "created_at": now, "updated_at": now, "is_anonymous": False, "is_sso_user": False,
        }
        self.users[user_id] = user
        if password is not None:
            self.passwords[user_id] = password
        return user

    # --- the wire
    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, request.headers.get("Authorization", "")))
        try:
            body = await self._dispatch(request)
            return web.json_response(body, headers={"X-Supabase-Api-Version": API_VERSION})
        except AuthError as exc:
            # a client that names API version 2024-01-01 gets that version's error body, others the older one
            if request.headers.get("X-Supabase-Api-Version", "") >= API_VERSION:
                body: dict[str, Any] = {"code": exc.error_code, "message": exc.msg}
            else:
                body = {"code": exc.status, "error_code": exc.error_code, "msg": exc.msg}
            return web.json_response(body, status=exc.status, headers={"X-Supabase-Api-Version": API_VERSION})

    async def rest(self, request: web.Request) -> web.StreamResponse:
        """PostgREST, as far as tests need it: the request is recorded (who it ran as) and finds no rows."""
        self.requests.append((request.method, request.path, request.headers.get("Authorization", "")))
        return web.json_response([], headers={"Content-Range": "*/0"})

    async def _dispatch(self, request: web.Request) -> Any:
        path = request.match_info["path"]
        method = request.method
        if path == ".well-known/jwks.json" and method == "GET":
            self.jwks_fetches += 1
            return {"keys": [k.public_jwk() for k in self.keys]}
        if path == "token" and method == "POST":
            self._require_apikey(request)
            return self._token(request.query.get("grant_type", ""), await _json(request))
        if path == "user":
            user = self._user_of(request)
            if method == "PUT":
                changes = await _json(request)
                _merge(user["user_metadata"], changes.get("data") or {})
                if changes.get("password"):
                    self.passwords[user["id"]] = changes["password"]
                user["updated_at"] = _now_iso()
            return user
        if path == "admin/users" or path.startswith("admin/users/"):
            self._require_service_role(request)
            return await self._admin(request, method, path.removeprefix("admin/users").strip("/"))
        raise AuthError(404, "not_found", "Not Found")

    def _require_apikey(self, request: web.Request) -> None:
        if request.headers.get("apikey") not in (self.anon_key, self.service_role_key):
            raise AuthError(401, "no_api_key", "No API key found in request")

    def _require_service_role(self, request: web.Request) -> None:
        self._require_apikey(request)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise AuthError(401, "no_authorization", "This endpoint requires a Bearer token")
        if auth.removeprefix("Bearer ") != self.service_role_key:
            raise AuthError(403, "not_admin", "User not allowed")

    def _user_of(self, request: web.Request) -> dict[str, Any]:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise AuthError(401, "no_authorization", "This endpoint requires a Bearer token")
        token = auth.removeprefix("Bearer ")
        try:
            if self.signing == "HS256":
                claims = jwt.decode(token, self.jwt_secret, algorithms=["HS256"], audience="authenticated")
            else:
                kid = jwt.get_unverified_header(token).get("kid")
                key = next(k for k in self.keys if k.kid == kid)
                claims = jwt.decode(token, key.private.public_key(), algorithms=[key.alg], audience="authenticated")
        except (jwt.PyJWTError, StopIteration) as exc:
            raise AuthError(403, "bad_jwt", f"invalid JWT: unable to parse or verify signature, {exc}") from exc
        user = self.users.get(claims["sub"])
        if user is None:
            raise AuthError(403, "user_not_found", "User from sub claim in JWT does not exist")
        return user

    def _session(self, user: dict[str, Any]) -> dict[str, Any]:
        refresh = secrets.token_urlsafe(12)
        self.refresh_tokens[refresh] = user["id"]
        user["last_sign_in_at"] = _now_iso()
        return {"access_token": self.access_token(user), "token_type": "bearer", "expires_in": self.expires_in,
                "expires_at": int(time.time()) + self.expires_in, "refresh_token": refresh, "user": user}

    def _token(self, grant_type: str, body: dict[str, Any]) -> dict[str, Any]:
        if grant_type == "password":
            user = next((u for u in self.users.values() if u.get("email") == body.get("email")), None)
            if user is None or self.passwords.get(user["id"]) != body.get("password"):
                raise AuthError(400, "invalid_credentials", "Invalid login credentials")
            return self._session(user)
        if grant_type == "refresh_token":
            user_id = self.refresh_tokens.pop(str(body.get("refresh_token")), None)
            if user_id is None or user_id not in self.users:
                raise AuthError(400, "refresh_token_not_found", "Invalid Refresh Token: Refresh Token Not Found")
            return self._session(self.users[user_id])
        raise AuthError(400, "validation_failed", "unsupported_grant_type")

    async def _admin(self, request: web.Request, method: str, user_id: str) -> Any:
        if not user_id:
            if method == "GET":
                page = int(request.query.get("page") or 1)
                per_page = int(request.query.get("per_page") or 50)
                listed = list(self.users.values())[(page - 1) * per_page:page * per_page]
                return {"users": listed, "aud": "authenticated"}
            if method == "POST":
                body = await _json(request)
                if not body.get("email"):
                    raise AuthError(400, "validation_failed", "Unable to validate email address: invalid format")
                return self.add_user(body["email"], body.get("password"), app_metadata=body.get("app_metadata"),
                                     user_metadata=body.get("user_metadata"))
            raise AuthError(405, "method_not_allowed", "Method Not Allowed")
        user = self.users.get(user_id)
        if user is None:
            raise AuthError(404, "user_not_found", "User not found")
        if method == "GET":
            return user
        if method == "PUT":
            body = await _json(request)
            for key in ("app_metadata", "user_metadata"):
                if isinstance(body.get(key), dict):
                    _merge(user[key], body[key])
            if body.get("password"):
                self.passwords[user_id] = body["password"]
            user["updated_at"] = _now_iso()
            return user
        if method == "DELETE":
            del self.users[user_id]
            return {}
        raise AuthError(405, "method_not_allowed", "Method Not Allowed")


def _merge(target: dict[str, Any], changes: dict[str, Any]) -> None:
    """GoTrue's metadata update: keys are set, a null value deletes its key."""
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


async def _json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise AuthError(400, "bad_json", "Could not parse request body as JSON") from exc
    return body if isinstance(body, dict) else {}


class FakeSupabaseServer(LoopbackServer):
    """Runs a :class:`FakeSupabaseAuth` on a loopback port; ``url`` is the project URL."""

    def __init__(self, fake: FakeSupabaseAuth) -> None:
        app = web.Application()
        app.router.add_route("*", "/auth/v1/{path:.*}", fake.handle)
        app.router.add_route("*", "/rest/v1/{path:.*}", fake.rest)
        super().__init__(app)
        self.fake = fake

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/auth/v1/.well-known/jwks.json"

    async def start(self) -> None:
        await super().start()
        self.fake.url = self.url
