"""Settings of the supervisor console (``DEVART_CONSOLE_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVART_CONSOLE_", extra="ignore")

    session_ttl_s: float = Field(
        default=12 * 3600, gt=0, le=30 * 86400,
        description="how long a console sign-in lasts before the supervisor signs in again",
    )
    page_size: int = Field(default=50, ge=1, le=500, description="rows per page of the console's lists")
    live_coalesce_ms: int = Field(
        default=300, ge=0, le=10_000,
        description="a live list refreshes at most this often, and always after the last change it heard of",
    )
