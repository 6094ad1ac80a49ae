"""The GitHub integration of one control plane: the delivery processor and the reporter, started
and stopped with it."""

from __future__ import annotations

import asyncpg

from control_plane import approvals
from control_plane.github import merge
from control_plane.github.client import GitHubKitClient
from control_plane.github.deliveries import DeliveryProcessor
from control_plane.github.reporter import GitHubReporter
from control_plane.github.settings import GitHubSettings
from control_plane.workflows.engine import WorkflowEngine


class GitHubIntegration:
    def __init__(self, pool: asyncpg.Pool, settings: GitHubSettings, engine: WorkflowEngine) -> None:
        self.settings = settings
        self.client = GitHubKitClient(settings)
        self.processor = DeliveryProcessor(pool, settings, engine)
        self.reporter = GitHubReporter(pool, self.client, settings)
        approvals.register_outcome_handler(merge.APPROVAL_SUBJECT, merge.approval_decided)

    def start(self) -> None:
        self.processor.start()
        self.reporter.start()

    async def stop(self) -> None:
        await self.processor.stop()
        await self.reporter.stop()
