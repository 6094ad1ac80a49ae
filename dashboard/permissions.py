"""What the console lets a role do is what the API lets it do: the permission of each action is read
from the API route of the same operation (its ``require(...)`` dependency), never restated here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute


def _permissions(dependant: Dependant) -> set[str]:
    found: set[str] = set()
    for sub in dependant.dependencies:
        permission = getattr(sub.call, "permission", None)
        if isinstance(permission, str):
            found.add(permission)
        found |= _permissions(sub)
    return found


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:  # FastAPI >= 0.120 keeps routers
            yield from _api_routes(included.routes)


def api_permissions(app: FastAPI) -> dict[str, str]:
    """``operation_id -> permission`` for every API route guarded by exactly one permission."""
    table: dict[str, str] = {}
    for route in _api_routes(app.routes):
        if route.operation_id:
            found = _permissions(route.dependant)
            if len(found) == 1:
                table[route.operation_id] = found.pop()
    return table


class Permissions:
    """The API's permission table, built once from the app's routes."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._table: dict[str, str] | None = None

    def of(self, operation_id: str) -> str:
        if self._table is None:
            self._table = api_permissions(self._app)
        try:
            return self._table[operation_id]
        except KeyError:
            raise LookupError(f"no API operation {operation_id!r} guarded by a permission") from None

    def allowed(self, who: Any, operation_id: str) -> bool:
        return bool(who.can(self.of(operation_id)))
