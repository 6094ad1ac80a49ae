"""`devart supabase create-user|set-role|users|sign-in` against a local Supabase Auth server, and the
tokens they lead to on the real API; why the admin client is never the signed-in one."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from supabase import AsyncClientOptions, acreate_client

from tests.control_plane.supabase.conftest import ApiFor, accepting
from tests.supabase_fake.server import FakeSupabaseServer
from tests.support.cli import devart
from tests.support.system import client


async def _devart(*args: str, env: dict[str, str], home: Path, stdin: str = "") -> tuple[int, str, str]:
    return await devart("supabase", *args, env=env, home=home, stdin=stdin)


def _env(server: FakeSupabaseServer, **overrides: str) -> dict[str, str]:
    return {"DEVART_SUPABASE_URL": server.url, "DEVART_SUPABASE_SERVICE_ROLE_KEY": server.fake.service_role_key,
            "DEVART_SUPABASE_ANON_KEY": server.fake.anon_key, **overrides}


async def test_users_are_created_given_roles_and_their_tokens_act_with_them(
    supabase: FakeSupabaseServer, api_for: ApiFor, tmp_path: Path
) -> None:
    env = _env(supabase)
    code, out, err = await _devart("create-user", "--email", "ana@example.com", "--role", "supervisor",
                                   "--password-stdin", env=env, home=tmp_path, stdin="pw-ana-12345\n")
    assert code == 0, err
    assert out.startswith("created Supabase user ") and "with devart role supervisor" in out
    code, out, err = await _devart("create-user", "--email", "bo@example.com", env=env, home=tmp_path)
    assert code == 0 and "with devart role none" in out, err

    code, out, err = await _devart("users", "--output", "json", env=env, home=tmp_path)
    assert code == 0, err
    listed = {u["email"]: u for u in json.loads(out)}
    assert listed["ana@example.com"]["devart_role"] == "supervisor" and listed["bo@example.com"]["devart_role"] is None
    ana_id = listed["ana@example.com"]["id"]
    assert supabase.fake.users[ana_id]["app_metadata"]["devart_role"] == "supervisor"
    assert "devart_role" not in supabase.fake.users[ana_id]["user_metadata"]

    async def signed_in() -> str:
        code, out, err = await _devart("sign-in", "--email", "ana@example.com", "--password-stdin", env=env,
                                       home=tmp_path, stdin="pw-ana-12345\n")
        assert code == 0, err
        return out.strip()

    async with api_for(accepting(supabase)) as base_url:
        supervisor_token = await signed_in()
        async with client(base_url, supervisor_token) as ana:
            assert (await ana.get("/api/v1/tasks")).status_code == 200
            assert (await ana.post("/api/v1/tokens", json={"name": "x", "role": "ci"})).status_code == 403

        code, out, err = await _devart("set-role", "ana@example.com", "admin", env=env, home=tmp_path)
        assert code == 0 and "now has devart role admin from their next access token" in out, err
        async with client(base_url, await signed_in()) as ana:
            assert (await ana.post("/api/v1/tokens", json={"name": "x", "role": "ci"})).status_code == 201
        async with client(base_url, supervisor_token) as ana:  # the older token still says supervisor
            assert (await ana.post("/api/v1/tokens", json={"name": "y", "role": "ci"})).status_code == 403

        code, out, err = await _devart("set-role", ana_id, "none", env=env, home=tmp_path)
        assert code == 0 and "now has devart role none" in out, err
        async with client(base_url, await signed_in()) as ana:
            response = await ana.get("/api/v1/tasks")
            assert response.status_code == 403 and "has no devart role" in response.json()["error"]["message"]

    admin_calls = [r for r in supabase.fake.requests if "/admin/" in r[1]]
    assert admin_calls and all(auth == f"Bearer {supabase.fake.service_role_key}" for _, _, auth in admin_calls)
    sign_ins = [r for r in supabase.fake.requests if r[1] == "/auth/v1/token"]
    assert len(sign_ins) == 3 and all(auth == f"Bearer {supabase.fake.anon_key}" for _, _, auth in sign_ins)


async def test_refusals_name_what_is_wrong(supabase: FakeSupabaseServer, tmp_path: Path) -> None:
    code, out, err = await _devart("users", env={}, home=tmp_path)
    assert code == 2 and out == "" and "DEVART_SUPABASE_SERVICE_ROLE_KEY" in err

    code, _, err = await _devart("users", env=_env(supabase, DEVART_SUPABASE_SERVICE_ROLE_KEY=supabase.fake.anon_key),
                                 home=tmp_path)
    assert code == 3 and "Supabase Auth said 403: User not allowed (not_admin)" in err

    supabase.fake.add_user("ana@example.com", "pw-ana-12345")
    code, _, err = await _devart("create-user", "--email", "ana@example.com", env=_env(supabase), home=tmp_path)
    assert code == 3 and "A user with this email address has already been registered (email_exists)" in err
    code, _, err = await _devart("set-role", "nobody@example.com", "viewer", env=_env(supabase), home=tmp_path)
    assert code == 3 and "no Supabase user with email 'nobody@example.com'" in err
    code, _, err = await _devart("sign-in", "--email", "ana@example.com", "--password-stdin", env=_env(supabase),
                                 home=tmp_path, stdin="wrong\n")
    assert code == 3 and "Invalid login credentials (invalid_credentials)" in err

    await supabase.stop()
    code, _, err = await _devart("users", env=_env(supabase), home=tmp_path)
    assert code == 4 and "cannot reach Supabase Auth" in err


async def test_a_client_that_signs_a_user_in_runs_as_that_user_afterwards(supabase: FakeSupabaseServer) -> None:
    """What SupabaseAdmin avoids by never signing in: the same supabase-py client, once a user signs in
    through it, sends that user's token on its data calls (their row-level security, not the service role)."""
    supabase.fake.add_user("ana@example.com", "pw-ana-12345")
    http = httpx.AsyncClient()
    shared = await acreate_client(supabase.url, supabase.fake.service_role_key,
                                  AsyncClientOptions(auto_refresh_token=False, persist_session=False, httpx_client=http))
    try:
        await shared.table("tasks").select("*").execute()
        session = (await shared.auth.sign_in_with_password({"email": "ana@example.com", "password": "pw-ana-12345"}))
        assert session.session is not None
        await shared.table("tasks").select("*").execute()
    finally:
        await http.aclose()
    before, after = [auth for _, path, auth in supabase.fake.requests if path == "/rest/v1/tasks"]
    assert before == f"Bearer {supabase.fake.service_role_key}"
    assert after == f"Bearer {session.session.access_token}"
