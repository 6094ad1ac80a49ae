"""A local Supabase Auth server and a control plane that accepts the access tokens it issues."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from agents.sdk import BrokerSettings
from control_plane.service import ControlPlane
from control_plane.supabase import SupabaseSettings
from tests.supabase_fake.server import FakeSupabaseAuth, FakeSupabaseServer
from tests.support.system import fast_settings, serve_api


@pytest.fixture
async def supabase() -> AsyncIterator[FakeSupabaseServer]:
    server = FakeSupabaseServer(FakeSupabaseAuth())
    await server.start()
    yield server
    await server.stop()


def accepting(server: FakeSupabaseServer, *, secret: bool = True, jwks: bool = False, **extra: Any) -> SupabaseSettings:
    """Settings that accept ``server``'s tokens: HS256 with its secret and/or its JWKS, its issuer checked."""
    return SupabaseSettings(
        url=server.url, jwt_secret=server.fake.jwt_secret if secret else None,
        jwks_url=server.jwks_url if jwks else None, jwt_issuer=server.fake.issuer, **extra,
    )


ApiFor = Callable[[SupabaseSettings], AbstractAsyncContextManager[str]]


@pytest.fixture
def api_for(database_url: str, broker_settings: BrokerSettings) -> ApiFor:
    """``async with api_for(supabase_settings) as base_url``: the real API accepting those tokens."""

    @asynccontextmanager
    async def serve(settings: SupabaseSettings) -> AsyncIterator[str]:
        async with ControlPlane(fast_settings(database_url, broker_settings, supabase=settings)) as cp:
            async with serve_api(cp) as url:
                yield url

    return serve
