"""Refusing request text that Postgres cannot store, with a 422 that names the field.

NUL (``\\u0000``) and lone UTF-16 surrogates (``\\ud800``) are valid in JSON and in Python strings,
and percent-encoded bytes in a URL may be invalid UTF-8; none of them can be stored in a ``text`` or
``jsonb`` column. Left alone they reach asyncpg, which raises an encoding error: a 500, and a reset
keep-alive connection. :func:`unstorable_text_refusal`'s dependency runs before the routes and
refuses them at the door instead. Agents' output is not refused but cleaned (``agents.sdk.messages.safe_text``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import Request

from control_plane.errors import InvalidInput

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Escapes that can decode to NUL or a surrogate; a hit is checked on the parsed body (valid pairs pass).
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_PROBLEM = "contains a NUL character, a lone surrogate or invalid UTF-8, which cannot be stored"


def _bad_text(value: str) -> bool:
    return _UNSTORABLE.search(value) is not None


def _invalid_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _find(value: Any, where: str) -> str | None:
    """Where in a parsed JSON value the first unstorable string (or key) is, as ``body.a.0.b``."""
    if isinstance(value, str):
        return where if _bad_text(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _bad_text(key):
                return f"{where}.{key.encode('utf-8', 'backslashreplace').decode()}"
            if (found := _find(item, f"{where}.{key}")) is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if (found := _find(item, f"{where}.{i}")) is not None:
                return found
    return None


def _query_field(raw_query: bytes) -> str | None:
    if not raw_query:
        return None
    for pair in raw_query.split(b"&"):
        name, _, value = pair.partition(b"=")
        name_bytes = unquote_to_bytes(name.replace(b"+", b" "))
        value_bytes = unquote_to_bytes(value.replace(b"+", b" "))
        for part in (name_bytes, value_bytes):
            if b"\x00" in part or _invalid_utf8(part):
                return "query." + name_bytes.decode("utf-8", "replace").replace("\x00", "\\x00")
    return None


def _path_field(request: Request) -> str | None:
    raw_path = request.scope.get("raw_path") or b""
    if raw_path.isascii() and b"%" not in raw_path and b"\x00" not in raw_path:
        return None  # nothing to decode: the common case, answered without unquoting
    decoded = unquote_to_bytes(raw_path)
    if b"\x00" not in decoded and not _invalid_utf8(decoded):
        return None
    for name, value in request.path_params.items():
        if isinstance(value, str) and ("\x00" in value or "\ufffd" in value):
            return f"path.{name}"
    return "path"


def unstorable_text_refusal(raw_body_paths: frozenset[str]) -> Callable[[Request], Awaitable[None]]:
    """The app-wide dependency: 422 ``invalid_input`` naming the query, path or JSON body field that
    holds unstorable text. The body is left unread on ``raw_body_paths`` (the OTLP receiver and the
    GitHub webhook bound and decode their own). One dependency for all three checks: FastAPI's cost
    grows with every dependency it solves per request."""

    async def refuse_unstorable_text(request: Request) -> None:
        field = _query_field(request.scope.get("query_string", b"")) or _path_field(request)
        if field is None and request.scope["path"] not in raw_body_paths:
            field = await _body_field(request)
        if field is not None:
            raise InvalidInput(f"{field} {_PROBLEM}", field=field)

    return refuse_unstorable_text


async def _body_field(request: Request) -> str | None:
    if "json" not in request.headers.get("content-type", ""):
        return None
    body = await request.body()  # already read and cached by FastAPI for the route's own model
    if not _SUSPECT_ESCAPE.search(body):
        return None
    try:
        return _find(json.loads(body), "body")
    except (ValueError, RecursionError):
        return None  # the route's own validation says what is wrong with it
