"""The action catalogue: every action devart can take, by name."""

from aiops.remediation.actions.base import Action, Context, DevartOps, DryRunUnsupported, Plan, Refused
from aiops.remediation.actions.devart import (
    CancelStuck,
    DrainAgent,
    DrainPool,
    Notify,
    PauseAgent,
    PausePool,
    RequeueDead,
    RetryTask,
)
from aiops.remediation.actions.kubernetes import (
    Cordon,
    DeletePod,
    EvictPod,
    Restart,
    Rollback,
    Scale,
    Uncordon,
)

CATALOGUE: dict[str, Action] = {
    action.name: action
    for action in (Restart(), Scale(), Rollback(), EvictPod(), DeletePod(), Cordon(), Uncordon(), DrainPool(),
                   PausePool(), DrainAgent(), PauseAgent(), RequeueDead(), RetryTask(), CancelStuck(), Notify())
}

__all__ = ["CATALOGUE", "Action", "Context", "DevartOps", "DryRunUnsupported", "Plan", "Refused"]
