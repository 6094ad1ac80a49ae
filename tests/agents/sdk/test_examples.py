"""The example from docs/agent-sdk.md works through the harness and through the broker."""

from __future__ import annotations

from agents.examples import hello
from agents.sdk import TaskSucceeded, run_handler
from tests.agents.sdk.broker import ControlPlane
from tests.support.system import StartAgent


async def test_hello_through_the_harness() -> None:
    outcome = await run_handler(hello.greet, {"name": "Ada", "times": 2})
    assert outcome.status == "succeeded"
    assert outcome.result == {"greetings": ["hello, Ada (1/2)", "hello, Ada (2/2)"]}
    assert [text for _, text in outcome.logs] == outcome.result["greetings"]
    assert [fraction for fraction, _ in outcome.progress] == [0.5, 1.0]
    refused = await run_handler(hello.greet, {"name": "nobody"})
    assert (refused.status, refused.retryable) == ("failed", False)


async def test_hello_through_the_broker(cp: ControlPlane, start_agent: StartAgent) -> None:
    runtime = await start_agent(hello.build_agent())
    task = await cp.submit(runtime.agent.pool_id, "greet", {"name": "Ada"})
    done = await cp.received.wait_for(lambda e: isinstance(e, TaskSucceeded) and e.task_id == task.task_id)
    assert done.result == {"greetings": ["hello, Ada (1/1)"]}
