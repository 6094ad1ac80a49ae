"""Typed settings of the workflow engine (``DEVART_WORKFLOW_`` prefix)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkflowSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVART_WORKFLOW_", extra="ignore")

    max_steps: int = Field(default=500, ge=1, description="most steps (main and finally) one definition may hold")
    max_matrix_jobs: int = Field(default=256, ge=1, description="most jobs one matrix step may expand to")
    max_outputs_bytes: int = Field(
        default=1_048_576, ge=1024, description="largest JSON of one step's outputs; a step over it fails"
    )
    max_definition_bytes: int = Field(default=262_144, ge=1024, description="largest workflow definition accepted")
    max_inputs_bytes: int = Field(default=65_536, ge=256, description="largest JSON of one run's inputs")
    schedule_interval_s: float = Field(default=5.0, gt=0, description="period of the cron schedule loop")
    schedule_grace_s: float = Field(
        default=60.0, ge=0,
        description="a fire time older than this when the scheduler sees it counts as missed (missed-run policy)",
    )
    max_catch_up_runs: int = Field(
        default=10, ge=1, description="most runs one schedule starts at once under the missed policy run_all"
    )
