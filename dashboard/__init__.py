"""The supervisor console: server-rendered pages served by the control plane at ``/``."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from dashboard.permissions import Permissions
from dashboard.settings import ConsoleSettings
from dashboard.web import HERE, Console

__all__ = ["ConsoleSettings", "install"]


def install(app: FastAPI, settings: ConsoleSettings | None = None) -> None:
    """Serve the console's pages and its vendored static files from ``app``."""
    from dashboard.views import (
        agents,
        approvals,
        auth,
        dead_letters,
        incidents,
        overview,
        runs,
        tasks,
        tokens,
        traces,
    )

    app.state.console = Console(settings or ConsoleSettings(), Permissions(app))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for module in (auth, overview, tasks, runs, agents, incidents, approvals, dead_letters, traces, tokens):
        app.include_router(module.router)
