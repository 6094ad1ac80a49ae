"""Attack: text Postgres cannot store (NUL, lone surrogates, invalid UTF-8) in JSON bodies, query
and path parameters. Each gets a 422 naming the field, never a 500, and the keep-alive connection
that carried it serves the next request."""

from __future__ import annotations

import httpx
import pytest

CASES = [
    ("POST", "/api/v1/tasks", b'{"type": "echo", "input": {"text": "a\\u0000b"}}', "body.input.text"),
    ("POST", "/api/v1/tasks", b'{"type": "echo", "input": {"text": "a\\ud800b"}}', "body.input.text"),
    ("POST", "/api/v1/tasks", b'{"type": "echo", "requires": ["py\\u0000"]}', "body.requires.0"),
    ("POST", "/api/v1/tasks/batch", b'{"tasks": [{"type": "echo", "input": {"k\\udfff": 1}}]}', "body.tasks.0.input"),
    ("POST", "/api/v1/changes", b'{"kind": "deployment", "service": "api", "detail": "x\\u0000"}', "body.detail"),
    ("GET", "/api/v1/tasks?type=a%00b", None, "query.type"),
    ("GET", "/api/v1/tasks?agent=%ff%fe", None, "query.agent"),
    ("GET", "/api/v1/agents/ab%00cd", None, "path.agent_id"),
    ("GET", "/api/v1/agents/ab%c3%28", None, "path.agent_id"),
]


@pytest.mark.parametrize(("method", "url", "body", "field"), CASES, ids=[c[3] + ":" + c[1] for c in CASES])
async def test_unstorable_text_gets_422_naming_the_field(
    admin: httpx.AsyncClient, method: str, url: str, body: bytes | None, field: str
) -> None:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    response = await admin.request(method, url, content=body, headers=headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"].startswith(field), error
    # the same keep-alive connection answers the next request
    assert (await admin.get("/api/v1/tasks")).status_code == 200
