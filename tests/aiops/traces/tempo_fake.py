"""A local HTTP server answering like Tempo's HTTP API, scripted per path, recording every request."""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.loopback import ThreadedServer


@dataclass
class Seen:
    path: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass
class FakeTempo:
    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    _scripts: dict[str, deque[tuple[int, bytes, dict[str, str]]]] = field(
        default_factory=lambda: defaultdict(deque)
    )

    def reply(self, path: str, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        """Queue one answer for ``path``; the last queued answer repeats. ``body``: JSON or bytes."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self._scripts[path].append((status, raw, headers or {}))

    def seen(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    def _answer(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        script = self._scripts.get(path)
        if not script:
            return 404, b"trace not found", {}
        return script.popleft() if len(script) > 1 else script[0]


@contextmanager
def fake_tempo() -> Iterator[FakeTempo]:
    fake = FakeTempo()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            fake.requests.append(Seen(parts.path, params, {k.lower(): v for k, v in self.headers.items()}))
            status, body, headers = fake._answer(parts.path)
            self.send_response(status)
            self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with ThreadedServer(Handler) as server:
        fake.url = server.url
        yield fake
