"""The remediation pipeline inside the control plane: what it may do to devart, its approvals, its loop.

``aiops.remediation`` knows nothing of the control plane; this module hands it the control plane's
operations (agent commands through the outbox, task retry and cancel), the approval object, and
registers the pipeline as the owner of ``remediation`` approvals.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg

from agents.sdk.messages import ControlCommand
from agents.sdk.topology import Topology
from aiops.remediation.kube import Kube, api_client
from aiops.remediation.pipeline import Pipeline
from aiops.remediation.policy import Policy
from aiops.remediation.settings import RemediationSettings
from aiops.remediation.store import SUBJECT_KIND
from aiops.traces.source import SpanSource
from control_plane import approvals
from control_plane.audit import audit
from control_plane.loops import LoopService
from control_plane.outbox import OutboxMessage, enqueue
from control_plane.tasks import cancel_task, retry_task

log = logging.getLogger("devart.remediation")


class ControlPlaneOps:
    """devart operations for devart-internal actions, in the pipeline's transaction."""

    def __init__(self, topology: Topology, *, agent_ttl_s: float, attempts_budget: int) -> None:
        self._topology = topology
        self._agent_ttl_s = agent_ttl_s
        self._attempts_budget = attempts_budget

    async def command_agent(self, conn: asyncpg.Connection, agent_id: str, action: Literal["drain", "pause"],
                            reason: str) -> None:
        body = ControlCommand(action=action, reason=reason).model_dump_json().encode()
        await enqueue(conn, [OutboxMessage(self._topology.control, f"agent.{agent_id}", body)])
        await audit(conn, actor="remediation", action=f"agent.{action}", target=agent_id, detail={"reason": reason})

    async def retry_task(self, conn: asyncpg.Connection, task_id: UUID, *, actor: str, reason: str) -> None:
        await retry_task(conn, task_id, actor=actor, topology=self._topology, agent_ttl_s=self._agent_ttl_s,
                         attempts_budget=self._attempts_budget)
        await audit(conn, actor=actor, action="task.retry", target=str(task_id), detail={"reason": reason})

    async def cancel_task(self, conn: asyncpg.Connection, task_id: UUID, *, actor: str, reason: str) -> None:
        await cancel_task(conn, task_id, actor=actor, reason=reason, topology=self._topology)
        await audit(conn, actor=actor, action="task.cancel", target=str(task_id), detail={"reason": reason})


class ApprovalObject:
    """A remediation's approval is the control plane's approval object."""

    async def request(self, conn: asyncpg.Connection, *, remediation_id: UUID, summary: str, link: str, risk: str,
                      requested_by: str, expires_at: datetime, roles: tuple[str, ...], principals: tuple[str, ...],
                      min_approvals: int) -> str:
        approval = await approvals.create_approval(
            conn, subject_kind=SUBJECT_KIND, subject_id=str(remediation_id), summary=summary, link=link,
            risk=risk, requested_by=requested_by, expires_at=expires_at, roles=roles, principals=principals,  # type: ignore[arg-type]
            min_approvals=min_approvals,
        )
        return approval.id


def build_pipeline(pool: asyncpg.Pool, settings: RemediationSettings, *, topology: Topology, agent_ttl_s: float,
                   attempts_budget: int, source: SpanSource | None) -> Pipeline:
    """The pipeline, with the policy validated now (a bad file stops the start with the line named)."""
    policy = Policy.load(settings.policy)
    kube = None
    if settings.kubeconfig is not None or settings.in_cluster:
        kube = Kube(api_client(settings.kubeconfig, settings.context))
    pipeline = Pipeline(pool, policy=policy, settings=settings, approvals=ApprovalObject(), kube=kube,
                        ops=ControlPlaneOps(topology, agent_ttl_s=agent_ttl_s, attempts_budget=attempts_budget),
                        source=source)

    async def on_outcome(conn: asyncpg.Connection, approval: approvals.Approval) -> None:
        by = ", ".join(d.who for d in approval.decisions) or "approval-expiry"
        await pipeline.approval_outcome(conn, UUID(approval.subject.id), approval.state, approval.state_reason, by)

    async def lock(conn: asyncpg.Connection, subject_id: str) -> None:
        await conn.execute("SELECT 1 FROM remediations WHERE id = $1 FOR UPDATE", UUID(subject_id))

    approvals.register_outcome_handler(SUBJECT_KIND, on_outcome, lock=lock)
    log.info("remediation policy: %s", policy.source)
    return pipeline


class RemediationLoop(LoopService):
    """Runs the pipeline every ``interval_s``."""

    name = "remediation"

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__(pipeline.settings.interval_s)
        self.pipeline = pipeline

    async def run_once(self) -> None:
        await self.pipeline.run_once()
