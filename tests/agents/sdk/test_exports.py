"""The SDK's public face is pinned: changing it is a deliberate act."""

from __future__ import annotations

import agents.sdk


def test_public_names_are_pinned() -> None:
    assert sorted(agents.sdk.__all__) == [
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
    assert all(hasattr(agents.sdk, name) for name in agents.sdk.__all__)


def test_settings_describe_every_field() -> None:
    fields = agents.sdk.AgentRuntimeSettings.model_fields
    assert all(f.description for f in fields.values())
    assert agents.sdk.AgentRuntimeSettings.model_config["env_prefix"] == "DEVART_AGENT_"


def test_settings_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("DEVART_AGENT_HEARTBEAT_INTERVAL_S", "0.5")
    monkeypatch.setenv("DEVART_BROKER_PREFIX", "x.")
    settings = agents.sdk.AgentRuntimeSettings()
    assert settings.heartbeat_interval_s == 0.5 and settings.topology().prefix == "x."
    monkeypatch.setenv("DEVART_AGENT_LOG_BATCH_LINES", "0")
    try:
        agents.sdk.AgentRuntimeSettings()
    except ValueError as exc:
        assert "log_batch_lines" in str(exc)
    else:
        raise AssertionError("a batch of 0 lines was accepted")
