"""devart on a Supabase-shaped database (tests/support/supabase_shape.py), used by Supabase users: the
control plane migrates it as Supabase's postgres role at start, and the API takes their tokens."""

from __future__ import annotations

from agents.sdk import BrokerSettings
from control_plane.service import ControlPlane
from tests.control_plane.supabase.conftest import accepting
from tests.supabase_fake.server import FakeSupabaseServer
from tests.support.supabase_shape import SupabaseShapedPostgres
from tests.support.system import client, fast_settings, serve_api


async def test_supabase_users_work_on_a_supabase_database(
    supabase: FakeSupabaseServer, supabase_postgres: SupabaseShapedPostgres, broker_settings: BrokerSettings,
) -> None:
    fake = supabase.fake
    ci = fake.add_user("ci@example.com", app_metadata={"devart_role": "ci"})
    viewer = fake.add_user("vera@example.com", app_metadata={"devart_role": "viewer"})
    name = await supabase_postgres.create_database()  # as a new project has it: the control plane migrates
    try:
        settings = fast_settings(supabase_postgres.uri(name), broker_settings, supabase=accepting(supabase),
                                 db_app_password="app-password-for-the-test")  # the pools log in as devart_app
        async with ControlPlane(settings) as cp, serve_api(cp) as base_url:
            async with cp.pool.acquire() as conn:
                assert await conn.fetchval("SELECT session_user") == "devart_app"
            async with client(base_url, fake.access_token(ci)) as c:
                created = await c.post("/api/v1/tasks", json={"type": "shell", "input": {"command": "true"}})
                assert created.status_code == 201, created.text
            async with client(base_url, fake.access_token(viewer)) as v:
                listed = await v.get("/api/v1/tasks")
                assert listed.status_code == 200
                assert [t["id"] for t in listed.json()["items"]] == [created.json()["id"]]
                refused = await v.post("/api/v1/tasks", json={"type": "shell", "input": {"command": "true"}})
                assert refused.status_code == 403
    finally:
        await supabase_postgres.drop_database(name)
