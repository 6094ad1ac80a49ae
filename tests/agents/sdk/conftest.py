"""Fixtures of the SDK tests: a stand-in control plane (in-process agents come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agents.sdk.topology import Topology
from agents.sdk.trust import MessageSigner
from tests.agents.sdk.broker import ControlPlane, control_plane


@pytest.fixture
async def cp(amqp_url: str, topology: Topology, signer: MessageSigner) -> AsyncIterator[ControlPlane]:
    async with control_plane(amqp_url, topology, signer) as plane:
        yield plane


