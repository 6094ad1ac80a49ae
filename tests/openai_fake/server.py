"""A local OpenAI API speaking the real ``POST /v1/chat/completions`` wire format, for the ``openai``
client to talk to through its base URL.

It checks the bearer key (401 with OpenAI's error body otherwise), keeps every request body, and
answers with the chat completion the test scripted (``answer``: the assistant message's content),
``finish_reason`` ``length`` when told to, or an OpenAI error with a status.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support import loopback


@dataclass
class FakeOpenAI:
    key: str = field(default_factory=lambda: f"sk-test-{uuid.uuid4().hex}")
    answer: str = '{"verdict": "comment", "comments": []}'
    finish_reason: str = "stop"
    error: tuple[int, str] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)

    def reply(self, verdict: str, comments: list[dict[str, Any]]) -> None:
        self.answer = json.dumps({"verdict": verdict, "comments": comments})

    async def completions(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        body = await request.json()
        self.requests.append(body)
        if self.error is not None:
            return _error(self.error[0], self.error[1], "server_error")
        if not isinstance(body.get("messages"), list) or not body.get("model"):
            return _error(400, "'messages' and 'model' are required.", "invalid_request_error")
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.answer, "refusal": None},
                "logprobs": None,
                "finish_reason": self.finish_reason,
            }],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        })


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": code, "param": None, "code": code}},
                             status=status)


@asynccontextmanager
async def serve(fake: FakeOpenAI) -> AsyncIterator[str]:
    """Serves ``fake`` on a loopback port; yields the base URL OPENAI_BASE_URL gets (``.../v1``)."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.completions)
    async with loopback.serve(app) as origin:
        yield f"{origin}/v1"
