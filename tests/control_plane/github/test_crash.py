"""A control plane killed (SIGKILL) after storing a delivery and before its work committed: the next
one does the work, exactly once. Done for real on `devart serve` processes configured from the
environment, with the delivery processor held inside its transaction by the pull request's
concurrency-group lock, which the test holds."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import asyncpg
import pytest

from agents.sdk import BrokerSettings
from control_plane.serving import free_port
from tests.control_plane.github.conftest import REPO, SECRET
from tests.control_plane.github.test_webhook import PIPELINE
from tests.github_fake.server import FakeGitHub, FakeGitHubServer, pull_request_payload, send_webhook
from tests.support.system import api_ready, client, make_token, wait_for

SHA = "4" * 40
GROUP = f"github:{REPO}#40"


def _serve(database_url: str, broker: BrokerSettings, port: int, github_url: str, token: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **broker.environment(), DATABASE_URL=database_url, DEVART_PORT=str(port),
               DEVART_EMBEDDED_BROKER="false", DEVART_LOG_LEVEL="WARNING", DEVART_GITHUB_WEBHOOK_SECRETS=SECRET,
               DEVART_GITHUB_API_URL=github_url, DEVART_GITHUB_TOKEN=token, DEVART_GITHUB_PROCESS_INTERVAL_S="0.2",
               DEVART_GITHUB_REPORT_INTERVAL_S="0.2")
    return subprocess.Popen([sys.executable, "-m", "control_plane.cli", "serve"], env=env)


@pytest.mark.slow
async def test_killed_between_storing_a_delivery_and_its_work_the_work_happens_once(
    database_url: str, broker_settings: BrokerSettings, db: asyncpg.Pool,
) -> None:
    fake = FakeGitHub()
    server = FakeGitHubServer(fake)
    await server.start()
    fake.pull(REPO, 40, SHA)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    webhook = f"{base_url}/api/v1/github/webhook"
    process = _serve(database_url, broker_settings, port, server.url, fake.personal_token)
    holder = await asyncpg.connect(database_url)
    try:
        await wait_for(lambda: api_ready(base_url), timeout_s=60, what="the control plane")
        async with client(base_url, await make_token(database_url, "admin")) as admin:
            assert (await admin.post("/api/v1/workflows", json=PIPELINE)).status_code == 201
        await holder.execute("SELECT pg_advisory_lock(hashtextextended('devart.wfgroup:' || $1, 0))", GROUP)
        payload = pull_request_payload(REPO, 40, SHA, clone_url="https://example.com/acme/calc.git")
        response = await send_webhook(webhook, "pull_request", payload, SECRET, delivery="crash-1")
        assert response.status_code == 202

        waiting = """SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'
                     AND query LIKE '%devart.wfgroup:%'"""
        pid = await wait_for(lambda: db.fetchval(waiting), timeout_s=60, what="the processor inside its transaction")
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait)
        await holder.execute("SELECT pg_advisory_unlock_all()")
        gone = "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)"
        await wait_for(lambda: db.fetchval(gone, pid), timeout_s=30, what="the killed process's transaction to end")
        row = await db.fetchrow("SELECT state, runs FROM github_deliveries WHERE delivery_id = 'crash-1'")
        assert row["state"] == "received" and row["runs"] == []
        assert await db.fetchval("SELECT count(*) FROM workflow_runs") == 0
        assert fake.check_runs == {}

        process = _serve(database_url, broker_settings, port, server.url, fake.personal_token)
        await wait_for(lambda: api_ready(base_url), timeout_s=60, what="the restarted control plane")
        done = "SELECT state = 'done' FROM github_deliveries WHERE delivery_id = 'crash-1'"
        await wait_for(lambda: db.fetchval(done), timeout_s=60, what="the delivery processed after the restart")
        again = await send_webhook(webhook, "pull_request", payload, SECRET, delivery="crash-1")
        assert again.json()["duplicate"] is True
        async def checked() -> list[dict]:
            return fake.checks_for(SHA)

        await wait_for(checked, timeout_s=60, what="the check run")
        runs = await db.fetch("SELECT id, concurrency_group FROM workflow_runs")
        assert len(runs) == 1 and runs[0]["concurrency_group"] == GROUP
        assert len(fake.checks_for(SHA)) == 1 and fake.checks_for(SHA)[0]["external_id"] == str(runs[0]["id"])
    finally:
        await holder.close()
        process.kill()
        await asyncio.to_thread(process.wait)
        await server.stop()
