"""HTTP transport of the fake API server: routing, Status errors, chunked watch and log streams."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from tests.k8s_fake.store import KINDS, Gone, SelectorError
from tests.support.loopback import ThreadedServer

if TYPE_CHECKING:
    from tests.k8s_fake.cluster import FakeKubernetes

_REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed", 409: "AlreadyExists",
            410: "Expired", 422: "Invalid", 429: "TooManyRequests"}


def status_object(code: int, message: str, *, name: str = "", kind: str = "",
                  causes: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A ``metav1.Status`` failure body, the shape every real API error has."""
    details: dict[str, Any] = {"name": name, "kind": kind, **({"causes": causes} if causes else {})}
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _REASONS.get(code, "InternalError"),
        "details": details,
        "code": code,
    }


class ApiError(Exception):
    def __init__(self, code: int, message: str, *, name: str = "", kind: str = "",
                 causes: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.body = status_object(code, message, name=name, kind=kind, causes=causes)
        self.code = code


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any] | None
    resource: str = ""
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Response:
    code: int = 200
    body: Any = None
    stream: Iterator[bytes] | None = None
    content_type: str = "application/json"


def route(path: str) -> tuple[str, str | None, str | None, str | None]:
    """``(resource, namespace, name, subresource)`` of an API path; raises ApiError 404 otherwise."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        rest = parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        rest = parts[3:]
    else:
        raise ApiError(404, f"the server could not find the requested resource: {path}")
    if rest[:1] == ["namespaces"] and len(rest) <= 2:
        return "namespaces", None, (rest[1] if len(rest) == 2 else None), None
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    else:
        namespace = None
    if not rest or rest[0] not in KINDS:
        raise ApiError(404, f"the server could not find the requested resource: {path}")
    return rest[0], namespace, (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)


def _make_handler(cluster: FakeKubernetes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return

        def _dispatch(self) -> None:
            split = urlsplit(self.path)
            query = {key: values[-1] for key, values in parse_qs(split.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
                request = Request(self.command, split.path, query, body,
                                  extra={"content_type": self.headers.get("Content-Type")})
                request.resource, request.namespace, request.name, request.subresource = route(split.path)
                cluster.requests.append(request)
                response = cluster.handle(request)
            except ApiError as error:
                response = Response(error.code, error.body)
            except SelectorError as error:
                response = Response(400, status_object(400, str(error)))
            except Gone as error:
                response = Response(410, status_object(410, str(error)))
            except json.JSONDecodeError as error:
                response = Response(400, status_object(400, f"invalid JSON body: {error}"))
            self._send(response)

        def _send(self, response: Response) -> None:
            self.send_response(response.code)
            self.send_header("Content-Type", response.content_type)
            if response.stream is None:
                payload = (
                    response.body if isinstance(response.body, bytes) else json.dumps(response.body).encode()
                )
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for chunk in response.stream:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            finally:
                if hasattr(response.stream, "close"):
                    response.stream.close()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    return Handler


class FakeApiServer(ThreadedServer):
    """A threaded HTTP server on 127.0.0.1 and a free port, serving ``cluster``."""

    def __init__(self, cluster: FakeKubernetes) -> None:
        super().__init__(_make_handler(cluster))

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up on a stream (a stopped watch) are normal, not errors worth a traceback."""
