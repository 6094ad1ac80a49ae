"""An agent process for the redelivery test: its one task type hangs on an attempt's first delivery
and finishes at once on any later one (a marker file the task names says which), so the run of the
agent that gets the message after the first one is killed is short enough to send its start inside
its result, unless it announces the start of a redelivered attempt first."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel

from agents.sdk import Agent, TaskContext, run_agent, task_handler


class OnceInput(BaseModel):
    marker: str


@task_handler("once", input=OnceInput)
async def once(ctx: TaskContext, data: OnceInput) -> dict[str, str]:
    marker = Path(data.marker)
    if not await asyncio.to_thread(marker.exists):
        await asyncio.to_thread(marker.write_text, ctx.agent_id)
        await ctx.log(f"first delivery, on {ctx.agent_id}")
        await asyncio.Event().wait()  # until the test kills this process
    return {"by": ctx.agent_id, "first": await asyncio.to_thread(marker.read_text)}


def build_agent() -> Agent:
    return Agent("once", skills=["redelivery"], slots=1, handlers=[once])


if __name__ == "__main__":
    run_agent(build_agent())
