"""A complete example agent: greets someone, logging and reporting progress as it goes.

Run it against the broker with ``python -m agents.examples.hello``; test it with no broker through
``agents.sdk.run_handler`` (see docs/agent-sdk.md).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from agents.sdk import Agent, NonRetryableError, TaskContext, run_agent, task_handler


class GreetInput(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="who to greet")
    times: int = Field(default=1, ge=1, le=10, description="how many greetings")


class GreetResult(BaseModel):
    greetings: list[str]


@task_handler("greet", input=GreetInput)
async def greet(ctx: TaskContext, data: GreetInput) -> GreetResult:
    """Greet ``data.name`` ``data.times`` times; refuse to greet nobody."""
    if data.name.strip().lower() == "nobody":
        raise NonRetryableError("refusing to greet nobody")
    greetings = []
    for i in range(data.times):
        text = f"hello, {data.name} ({i + 1}/{data.times})"
        await ctx.log(text)
        await ctx.progress((i + 1) / data.times, text)
        greetings.append(text)
    return GreetResult(greetings=greetings)


def build_agent(slots: int = 2) -> Agent:
    return Agent("hello", skills=["greeting"], slots=slots, handlers=[greet], version="1.0")


if __name__ == "__main__":
    run_agent(build_agent())
