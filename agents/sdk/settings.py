"""Settings an agent process reads from its environment (agents know the broker only)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.sdk.topology import Topology


class BrokerPrefixUnset(ValueError):
    """The broker prefix is needed but was not given (only a control plane can derive it)."""


class BrokerSettings(BaseSettings):
    """Where the broker is and which names this installation uses on it."""

    model_config = SettingsConfigDict(env_prefix="DEVART_BROKER_", extra="ignore")

    amqp_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/",
        validation_alias=AliasChoices("AMQP_URL", "DEVART_BROKER_AMQP_URL"),
        description="RabbitMQ URL (credentials are never logged)",
    )
    prefix: str | None = Field(
        default=None,
        description="prefix of every exchange and queue name; unset = the control plane derives one from its "
        "database, unique per installation (`devart status` prints it for agents, which must be given it)",
    )
    delivery_limit: int = Field(default=5, ge=1, description="deliveries of one task message before it is dead-lettered")
    queue_expires_s: float | None = Field(
        default=None, gt=0,
        description="delete queues unused this long (tests, throwaway setups); never in production: "
        "an expired pool queue loses its queued tasks",
    )

    def environment(self) -> dict[str, str]:
        """Variables that give a child process these same settings (it reads them back at start)."""
        env = {"AMQP_URL": self.amqp_url, "DEVART_BROKER_DELIVERY_LIMIT": str(self.delivery_limit)}
        if self.prefix is not None:
            env["DEVART_BROKER_PREFIX"] = self.prefix
        if self.queue_expires_s is not None:
            env["DEVART_BROKER_QUEUE_EXPIRES_S"] = str(self.queue_expires_s)
        return env

    def topology(self) -> Topology:
        if self.prefix is None:
            raise BrokerPrefixUnset(
                "DEVART_BROKER_PREFIX is not set: an agent must use its installation's broker prefix "
                "(`devart status` prints it; `eval \"$(devart status --agent-env)\"` sets it)"
            )
        expires = None if self.queue_expires_s is None else int(self.queue_expires_s * 1000)
        return Topology(prefix=self.prefix, delivery_limit=self.delivery_limit, queue_expires_ms=expires)
