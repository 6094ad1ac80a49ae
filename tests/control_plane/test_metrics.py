"""GET /metrics in Prometheus text format, read with prometheus_client's own parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from agents.sdk import Agent
from tests.agents.sdk.sample_agent import HANDLERS
from tests.support.system import StartAgent, client, make_token, wait_for


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def _done(api: httpx.AsyncClient, task_id: str) -> bool:
    return (await api.get(f"/api/v1/tasks/{task_id}")).json()["status"] == "succeeded"


async def test_metrics_parse_and_count(base_url: str, database_url: str, admin: httpx.AsyncClient,
                                       start_agent: StartAgent) -> None:
    async with client(base_url, await make_token(database_url, "viewer")) as viewer:
        first = await viewer.get("/metrics")
        assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain; version=0.0.4")

        runtime = await start_agent(Agent("sample", skills=["test"], slots=2, handlers=HANDLERS))
        await wait_for(lambda: _pool_live(admin), what="the pool to be live")
        ids = [(await admin.post("/api/v1/tasks", json={"type": "echo", "requires": ["test"],
                                                        "input": {"lines": 1}})).json()["id"] for _ in range(3)]
        for task_id in ids:
            await wait_for(lambda task_id=task_id: _done(admin, task_id), what="task to succeed")
        await admin.post("/api/v1/tasks", json={"type": "nosuch"})

        samples = _samples((await viewer.get("/metrics")).text)
    pool = runtime.agent.pool_id
    assert samples[("devart_tasks", (("state", "succeeded"),))] == 3
    assert samples[("devart_tasks", (("state", "pending"),))] == 1
    assert samples[("devart_tasks", (("state", "dead"),))] == 0
    assert samples[("devart_pool_live_agents", (("pool", pool),))] == 1
    assert samples[("devart_pool_queue_depth", (("pool", pool),))] == 0
    assert samples[("devart_agents", (("state", "active"),))] == 1
    assert samples[("devart_dispatch_latency_seconds_count", (("pool", pool),))] == 3
    assert samples[("devart_dispatch_latency_seconds_bucket", (("le", "+Inf"), ("pool", pool)))] == 3
    assert samples[("devart_dispatch_latency_seconds_sum", (("pool", pool),))] > 0
    assert ("devart_outbox_lag_seconds", ()) in samples and ("devart_outbox_pending", ()) in samples
    assert samples[("devart_incidents", (("status", "open"),))] == 0


async def _pool_live(api: httpx.AsyncClient) -> bool:
    return any(p["live_agents"] for p in (await api.get("/api/v1/pools")).json())


async def test_metrics_need_a_reader_token(base_url: str, database_url: str) -> None:
    async with client(base_url, None) as anonymous:
        assert (await anonymous.get("/metrics")).status_code == 401
    async with client(base_url, await make_token(database_url, "agent")) as agent:
        assert (await agent.get("/metrics")).status_code == 403
