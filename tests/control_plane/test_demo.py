"""`devart demo`: a traced workload, a fault after the baseline, the incident and its cause, for real."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from uuid import uuid4

import pytest

from tests.support.services import TEST_QUEUE_PREFIX


@pytest.mark.slow
async def test_demo_shows_the_incident_and_its_root_cause(
    tmp_path: Path, database_url: str, amqp_url: str, _broker_prefixes: set[str]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVART_")}
    env |= {"DATABASE_URL": database_url, "AMQP_URL": amqp_url, "DEVART_HOME": str(tmp_path),
            "DEVART_EMBEDDED_BROKER": "false", "DEVART_BROKER_PREFIX": f"{TEST_QUEUE_PREFIX}demo-{uuid4().hex[:8]}.",
            "DEVART_BROKER_QUEUE_EXPIRES_S": "120"}
    _broker_prefixes.add(env["DEVART_BROKER_PREFIX"])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_plane.cli", "demo", "--step", "1", "--fault-after", "5", "--max-steps", "60",
        "--output", "json", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=110)
    story = err.decode()
    assert process.returncode == 0, story
    found = json.loads(out)
    assert "svc2" in found["incident"]["services"], story
    assert found["rca"]["status"] == "done", story
    assert found["rca"]["result"]["causes"][0]["service"] == "svc2", story
    assert "BEFORE the fault" not in story, story
    assert story.index("fault injected") < story.index("opened after the fault") < story.index("root-cause analysis"), story
    (remediation,) = found["remediations"]  # proposed from the analysis, never applied under the default policy
    assert remediation["origin"] == "rca" and remediation["applied_at"] is None, story
    assert story.index("root-cause analysis") < story.index("remediation proposed"), story
