"""The agent SDK: define handlers, bundle them into an agent, run it against the broker or a harness."""

from agents.sdk.agent import Agent
from agents.sdk.context import TaskContext, current_task
from agents.sdk.errors import NonRetryableError, RetryableError
from agents.sdk.handlers import HandlerDefinition, task_handler
from agents.sdk.messages import (
    AgentBye,
    AgentHeartbeat,
    AgentHello,
    ControlCommand,
    Event,
    LogLine,
    RunningTask,
    TaskFailed,
    TaskLog,
    TaskMessage,
    TaskProgress,
    TaskStarted,
    TaskSucceeded,
    pool_id,
)
from agents.sdk.runtime import AgentRuntime, AgentRuntimeSettings, run_agent
from agents.sdk.settings import BrokerSettings
from agents.sdk.testing import HandlerOutcome, run_handler
from agents.sdk.topology import Topology

__all__ = [
    "Agent",
    "AgentBye",
    "AgentHeartbeat",
    "AgentHello",
    "AgentRuntime",
    "AgentRuntimeSettings",
    "BrokerSettings",
    "ControlCommand",
    "Event",
    "HandlerDefinition",
    "HandlerOutcome",
    "LogLine",
    "NonRetryableError",
    "RetryableError",
    "RunningTask",
    "TaskContext",
    "TaskFailed",
    "TaskLog",
    "TaskMessage",
    "TaskProgress",
    "TaskStarted",
    "TaskSucceeded",
    "Topology",
    "current_task",
    "pool_id",
    "run_agent",
    "run_handler",
    "task_handler",
]
