"""What every action is: a typed input, a preflight, a dry-run, an apply and a rollout check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol
from uuid import UUID

import asyncpg
from pydantic import BaseModel

from aiops.remediation.policy import Decision

if TYPE_CHECKING:
    from aiops.remediation.kube import Kube

Kind = Literal["kubernetes", "devart", "notify"]
Risk = Literal["low", "medium", "high", "critical"]


class Refused(Exception):
    """The action must not run: the reason is the remediation's ``state_reason`` (state ``refused``)."""


class DryRunUnsupported(Refused):
    """An admission webhook cannot dry-run this object; it is never applied blind."""


class DevartOps(Protocol):
    """What devart-internal actions ask of the control plane, in the caller's transaction."""

    async def command_agent(self, conn: asyncpg.Connection, agent_id: str, action: Literal["drain", "pause"],
                            reason: str) -> None: ...

    async def retry_task(self, conn: asyncpg.Connection, task_id: UUID, *, actor: str, reason: str) -> None: ...

    async def cancel_task(self, conn: asyncpg.Connection, task_id: UUID, *, actor: str, reason: str) -> None: ...


@dataclass(frozen=True)
class Plan:
    """One remediation as its action sees it."""

    id: UUID
    action: str
    target: str
    namespace: str
    input: BaseModel
    decision: Decision
    incident_id: UUID | None = None


@dataclass
class Context:
    """What actions reach: the database (a connection in a transaction the pipeline owns), the
    Kubernetes API when configured, and the control plane's devart operations."""

    conn: asyncpg.Connection
    kube: Kube | None
    ops: DevartOps | None
    warnings: list[str] = field(default_factory=list)

    def require_kube(self) -> Kube:
        if self.kube is None:
            raise Refused("no Kubernetes API configured (DEVART_REMEDIATION_KUBECONFIG or in-cluster)")
        return self.kube

    def require_ops(self) -> DevartOps:
        if self.ops is None:
            raise Refused("devart operations are not available in this process")
        return self.ops


Rollout = tuple[Literal["done", "progressing", "failed"], str]


class Action:
    """Base of the catalogue. Subclasses set the class variables and override what they need."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    risk: ClassVar[Risk] = "medium"
    summary: ClassVar[str]
    Input: ClassVar[type[BaseModel]]

    async def preflight(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        """Read-only checks; raise :class:`Refused`. Returns what was found (stored and shown)."""
        return {}

    async def dry_run(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        """What applying would change (``{"changes": [...]}``), computed without changing anything."""
        return {"changes": []}

    async def apply(self, ctx: Context, plan: Plan, dry: dict[str, Any]) -> dict[str, Any]:
        """Make the change the dry-run ``dry`` showed; raise :class:`Refused` when it cannot."""
        raise NotImplementedError

    async def rollout(self, ctx: Context, plan: Plan, applied: dict[str, Any]) -> Rollout:
        """The first stage of verification: has the change itself taken effect?"""
        return "done", "nothing to roll out"

    def schema(self) -> dict[str, Any]:
        return self.Input.model_json_schema()
