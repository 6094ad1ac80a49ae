"""Supabase access tokens as bearer tokens on the real API: accepted when genuine, each attack refused.

Tokens come from a local server speaking Supabase Auth's wire format, signed in with the real
supabase-py client; the attacks are made by hand the way an attacker would make them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from tests.control_plane.supabase.conftest import ApiFor, accepting
from tests.supabase_fake.server import FakeSupabaseServer
from tests.support.system import client

TASK = {"type": "shell", "input": {"command": "true"}}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_made(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A JWT assembled by hand: HS256 with any bytes as the key (PyJWT refuses a PEM key), or unsigned."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = b"" if hmac_key is None else hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@asynccontextmanager
async def _signed_in(server: FakeSupabaseServer, email: str, password: str) -> AsyncIterator[AsyncClient]:
    """A user signed in with supabase-py, as a browser or a script of theirs would be."""
    user_client = await acreate_client(server.url, server.fake.anon_key,
                                       AsyncClientOptions(auto_refresh_token=False, persist_session=False))
    try:
        await user_client.auth.sign_in_with_password({"email": email, "password": password})
        yield user_client
    finally:
        await user_client.auth.close()


async def _access_token(server: FakeSupabaseServer, email: str, password: str) -> str:
    async with _signed_in(server, email, password) as user_client:
        session = await user_client.auth.get_session()
        assert session is not None
        return session.access_token


async def _status(base_url: str, token: str, method: str = "GET", path: str = "/api/v1/tasks",
                  **kwargs: Any) -> tuple[int, str]:
    async with client(base_url, token) as c:
        response = await c.request(method, path, **kwargs)
    message = response.json().get("error", {}).get("message", "") if response.status_code >= 400 else ""
    return response.status_code, message


async def test_a_signed_in_users_token_acts_with_the_role_in_app_metadata(
    supabase: FakeSupabaseServer, api_for: ApiFor
) -> None:
    supabase.fake.add_user("vera@example.com", "pw-vera-123", app_metadata={"devart_role": "viewer"})
    supabase.fake.add_user("ada@example.com", "pw-ada-123", app_metadata={"devart_role": "admin"})
    async with api_for(accepting(supabase)) as base_url:
        token = await _access_token(supabase, "vera@example.com", "pw-vera-123")
        assert await _status(base_url, token) == (200, "")
        code, message = await _status(base_url, token, "POST", "/api/v1/tasks", json=TASK)
        assert code == 403 and "role 'viewer' may not do this" in message

        async with client(base_url, await _access_token(supabase, "ada@example.com", "pw-ada-123")) as admin:
            created = await admin.post("/api/v1/tokens", json={"name": "ci-from-ada", "role": "ci"})
            assert created.status_code == 201, created.text
            listed = (await admin.get("/api/v1/tokens")).json()
        (row,) = [t for t in listed if t["name"] == "ci-from-ada"]
        assert row["created_by"] == "supabase:ada@example.com"


async def test_a_role_the_user_wrote_into_user_metadata_is_ignored(
    supabase: FakeSupabaseServer, api_for: ApiFor
) -> None:
    user = supabase.fake.add_user("mallory@example.com", "pw-mallory-1", app_metadata={"devart_role": "viewer"})
    supabase.fake.add_user("eve@example.com", "pw-eve-12345")
    async with api_for(accepting(supabase)) as base_url:
        for email, password in (("mallory@example.com", "pw-mallory-1"), ("eve@example.com", "pw-eve-12345")):
            async with _signed_in(supabase, email, password) as attacker:
                await attacker.auth.update_user({"data": {"devart_role": "admin"}})  # any user may do this
                session = (await attacker.auth.refresh_session()).session
            assert session is not None
            claims = jwt.decode(session.access_token, options={"verify_signature": False})
            assert claims["user_metadata"]["devart_role"] == "admin"  # the genuine token carries it
            code, message = await _status(base_url, session.access_token, "POST", "/api/v1/tokens",
                                          json={"name": f"stolen-{email}", "role": "admin"})
            if email.startswith("mallory"):
                assert code == 403 and "role 'viewer' may not do this" in message
            else:
                assert code == 403
                assert "has no devart role: app_metadata.devart_role must be one of" in message
                assert "user_metadata.devart_role is ignored" in message
        assert supabase.fake.users[user["id"]]["app_metadata"]["devart_role"] == "viewer"


async def test_forged_unsigned_expired_and_foreign_tokens_are_refused(
    supabase: FakeSupabaseServer, api_for: ApiFor
) -> None:
    user = supabase.fake.add_user("ada@example.com", "pw-ada-123", app_metadata={"devart_role": "admin"})
    fake = supabase.fake
    genuine = jwt.decode(fake.access_token(user), options={"verify_signature": False})
    now = int(time.time())
    attacks = {
        "forged signature": (jwt.encode(genuine, "not-the-project-secret-" * 2, algorithm="HS256"),
                             "its signature does not verify"),
        "alg none": (_hand_made({"alg": "none", "typ": "JWT"}, genuine, None), "algorithm 'none' is not accepted"),
        "alg None": (_hand_made({"alg": "None", "typ": "JWT"}, genuine, None), "algorithm 'None' is not accepted"),
        "expired": (fake.access_token(user, exp=now - 120, iat=now - 3720), "it has expired"),
        "not valid yet": (fake.access_token(user, nbf=now + 600), "it is not valid yet"),
        "another audience": (fake.access_token(user, aud="some-other-app"), "Audience doesn't match"),
        "another issuer": (fake.access_token(user, iss="https://evil.supabase.co/auth/v1"), "Invalid issuer"),
        "no expiry": (jwt.encode({k: v for k, v in genuine.items() if k != "exp"}, fake.jwt_secret,
                                 algorithm="HS256"), 'Token is missing the "exp" claim'),
        "the anon key": (fake.access_token(user, role="anon"), "its role is 'anon', not 'authenticated'"),
        "a service role key": (fake.access_token(user, role="service_role"), "its role is 'service_role'"),
        "not a user id": (fake.access_token(user, sub="admin"), "its sub is not a user id"),
        "garbage": ("eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln", "Supabase access token refused"),
    }
    async with api_for(accepting(supabase)) as base_url:
        assert await _status(base_url, fake.access_token(user)) == (200, "")
        for name, (token, reason) in attacks.items():
            code, message = await _status(base_url, token)
            assert code == 401, (name, code, message)
            assert reason in message, (name, message)


async def test_jwks_tokens_and_the_hs_rs_confusion(supabase: FakeSupabaseServer, api_for: ApiFor) -> None:
    fake = supabase.fake
    user = fake.add_user("ada@example.com", "pw-ada-123", app_metadata={"devart_role": "admin"})
    rsa_key = fake.use_asymmetric("RS256")
    genuine = fake.access_token(user)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    public_pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk = rsa_key.public_jwk()
    # The classic confusion: HMAC-sign with the public key (which anyone can fetch from the JWKS).
    confused = [_hand_made({"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid}, claims, public_pem),
                _hand_made({"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid}, claims,
                           json.dumps(jwk).encode())]
    es_key = fake.use_asymmetric("ES256")
    es_signed_with_rsa_kid = jwt.encode(claims, es_key.private, algorithm="ES256", headers={"kid": rsa_key.kid})
    fake.keys.remove(es_key)  # an ES256 key the JWKS never listed
    fake.signing = "RS256"

    async with api_for(accepting(supabase, secret=False, jwks=True)) as base_url:
        assert await _status(base_url, genuine) == (200, "")
        for token in confused:
            code, message = await _status(base_url, token)
            assert code == 401 and "algorithm 'HS256' is not accepted here (accepted: RS256, ES256)" in message
        code, message = await _status(base_url, es_signed_with_rsa_kid)
        assert code == 401 and f"key '{rsa_key.kid}' is an RS256 key, the token says ES256" in message
        code, message = await _status(base_url, jwt.encode(claims, rsa_key.private, algorithm="RS256"))
        assert code == 401 and "must name its signing key (kid)" in message
        forged = jwt.encode(claims, fake.use_asymmetric("RS256").private, algorithm="RS256",
                            headers={"kid": rsa_key.kid})
        code, message = await _status(base_url, forged)
        assert code == 401 and "its signature does not verify" in message

    # With both the secret and the JWKS accepted, an HS256 token is checked against the secret only.
    async with api_for(accepting(supabase, secret=True, jwks=True)) as base_url:
        for token in confused:
            code, message = await _status(base_url, token)
            assert code == 401 and "its signature does not verify" in message


async def test_keys_are_cached_and_fetched_again_for_a_rotated_key(
    supabase: FakeSupabaseServer, api_for: ApiFor
) -> None:
    fake = supabase.fake
    user = fake.add_user("ada@example.com", "pw-ada-123", app_metadata={"devart_role": "viewer"})
    fake.use_asymmetric("ES256")
    async with api_for(accepting(supabase, secret=False, jwks=True, jwks_refresh_min_s=0)) as base_url:
        for _ in range(5):
            assert await _status(base_url, fake.access_token(user)) == (200, "")
        assert fake.jwks_fetches == 1
        fake.use_asymmetric("RS256")  # Supabase rotates: a new key signs, the JWKS lists both
        assert await _status(base_url, fake.access_token(user)) == (200, "")
        assert fake.jwks_fetches == 2
        code, message = await _status(base_url, fake.access_token(user) + "x")
        assert code == 401

    async with api_for(accepting(supabase, secret=False, jwks=True, jwks_refresh_min_s=3600)) as base_url:
        made_up = jwt.encode({"sub": user["id"]}, fake.keys[-1].private, algorithm="RS256",
                             headers={"kid": "made-up"})
        fetches = fake.jwks_fetches
        for _ in range(5):  # unknown key ids do not make the API hammer the JWKS
            code, message = await _status(base_url, made_up)
            assert code == 401 and "key id 'made-up', which the JWKS at" in message
        assert fake.jwks_fetches == fetches + 1


async def test_a_user_without_a_devart_role_and_an_unreachable_jwks(
    supabase: FakeSupabaseServer, api_for: ApiFor
) -> None:
    fake = supabase.fake
    nobody = fake.add_user("new@example.com", "pw-new-1234")
    agent = fake.add_user("robot@example.com", "pw-robot-123", app_metadata={"devart_role": "agent"})
    async with api_for(accepting(supabase)) as base_url:
        code, message = await _status(base_url, fake.access_token(nobody))
        assert code == 403 and f"Supabase user {nobody['id']} has no devart role" in message
        code, message = await _status(base_url, fake.access_token(agent))
        assert code == 403 and "not 'agent'" in message
        assert (await _status(base_url, "dvt_not-a-real-token"))[0] == 401  # devart tokens still work as before

    fake.use_asymmetric("RS256")
    token = fake.access_token(nobody)
    await supabase.stop()
    async with api_for(accepting(supabase, secret=False, jwks=True)) as base_url:
        code, message = await _status(base_url, token)
        assert code == 503 and "cannot fetch the Supabase JWKS" in message
    async with httpx.AsyncClient() as http:  # nothing answers there any more
        try:
            await http.get(supabase.jwks_url, timeout=1)
            raise AssertionError("the fake Supabase server still answers")
        except httpx.TransportError:
            pass
