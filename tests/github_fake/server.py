"""A local GitHub REST API speaking GitHub's wire format, for githubkit to talk to through its base URL.

It checks the App JWT (RS256 under the App's public key, ``iss``, ``iat`` in the past, ``exp`` at
most 10 minutes after ``iat``) on ``POST /app/installations/{id}/access_tokens`` and the tokens it
issued (or a personal token) on every other call, answering ``401 Bad credentials`` otherwise. It
keeps check runs (and their annotations), issue comments, pull requests with their files and
reviews, review comments and merges, answers GitHub's error bodies (``{"message", "errors",
"documentation_url", "status"}``), and can be told to answer the next calls with a rate limit (403
with ``x-ratelimit-remaining: 0`` or 429 with ``retry-after``).

It also sends webhooks as GitHub does: the JSON body signed with HMAC-SHA256 in
``X-Hub-Signature-256``, with ``X-GitHub-Event`` and a ``X-GitHub-Delivery`` id.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from control_plane.github.webhooks import sign
from tests.support.loopback import LoopbackServer

DOCS = "https://docs.github.com/rest"


def rsa_key() -> tuple[str, str]:
    """(private PEM, public PEM) of a fresh App key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


class ApiError(Exception):
    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors, self.headers = status, message, errors, headers or {}


@dataclass
class Call:
    method: str
    path: str
    body: Any
    auth: str


@dataclass
class Pull:
    number: int
    head_sha: str
    title: str = "a change"
    state: str = "open"
    draft: bool = False
    merged: bool = False
    merge_sha: str | None = None
    labels: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    """path -> unified diff patch."""
    reviews: list[dict[str, Any]] = field(default_factory=list)
    review_comments: list[dict[str, Any]] = field(default_factory=list)
    mergeable: bool = True


@dataclass
class FakeGitHub:
    app_id: str = "424242"
    public_key: str = ""
    personal_token: str = "ghp_personal_test_token"
    token_lifetime_s: float = 3600.0
    installations: set[int] = field(default_factory=lambda: {77})
    calls: list[Call] = field(default_factory=list)
    tokens: dict[str, tuple[int, float]] = field(default_factory=dict)
    check_runs: dict[int, dict[str, Any]] = field(default_factory=dict)
    annotations: dict[int, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    pulls: dict[tuple[str, int], Pull] = field(default_factory=dict)
    _limits: list[tuple[int, int]] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1000))

    # --- what tests do
    def rate_limit(self, status: int = 403, retry_after_s: int = 1, times: int = 1) -> None:
        """The next ``times`` API calls (not token requests) answer a rate limit: 403 with the
        primary-limit headers, or 429 with ``retry-after``."""
        self._limits += [(status, retry_after_s)] * times

    def calls_to(self, method: str, fragment: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and fragment in c.path]

    def pull(self, repo: str, number: int, head_sha: str, **fields: Any) -> Pull:
        self.pulls[(repo, number)] = Pull(number, head_sha, **fields)
        return self.pulls[(repo, number)]

    def checks_for(self, head_sha: str) -> list[dict[str, Any]]:
        return [c for c in self.check_runs.values() if c["head_sha"] == head_sha]

    def comments_on(self, repo: str, number: int) -> list[dict[str, Any]]:
        return [c for c in self.comments.values() if c["_repo"] == repo and c["_number"] == number]

    # --- the REST API
    async def handle(self, request: web.Request) -> web.Response:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                return _error(ApiError(400, "Problems parsing JSON"))
        self.calls.append(Call(request.method, request.path, body, request.headers.get("Authorization", "")))
        try:
            status, result = await self._route(request, body)
        except ApiError as exc:
            return _error(exc)
        return web.json_response(result, status=status, headers=_rate_headers(4999))

    async def _route(self, request: web.Request, body: Any) -> tuple[int, Any]:
        parts = request.path.strip("/").split("/")
        method = request.method
        if parts[:2] == ["app", "installations"] and parts[3:] == ["access_tokens"] and method == "POST":
            return 201, self._access_token(request, int(parts[2]))
        self._authenticate(request)
        if self._limits:
            status, wait = self._limits.pop(0)
            if status == 429:
                raise ApiError(429, "You have exceeded a secondary rate limit. Please wait a few minutes before "
                                    "you try again.", headers={"retry-after": str(wait)})
            raise ApiError(403, "API rate limit exceeded for installation ID 77.",
                           headers=_rate_headers(0, reset_in_s=wait))
        if len(parts) < 4 or parts[0] != "repos":
            raise ApiError(404, "Not Found")
        repo, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        match (method, rest):
            case ("POST", ["check-runs"]):
                return 201, self._create_check(repo, body)
            case ("PATCH", ["check-runs", check_id]):
                return 200, self._update_check(int(check_id), body)
            case ("POST", ["issues", number, "comments"]):
                return 201, self._comment(repo, int(number), body)
            case ("PATCH", ["issues", "comments", comment_id]):
                return 200, self._edit_comment(int(comment_id), body)
            case ("GET", ["pulls", number]):
                return 200, self._pull_json(repo, self._pull(repo, int(number)))
            case ("GET", ["pulls", number, "files"]):
                pull = self._pull(repo, int(number))
                return 200, [{"sha": secrets.token_hex(20), "filename": path, "status": "modified",
                              "additions": patch.count("\n+"), "deletions": patch.count("\n-"), "changes": 0,
                              "blob_url": "", "raw_url": "", "contents_url": "", "patch": patch}
                             for path, patch in pull.files.items()]
            case ("GET", ["pulls", number, "reviews"]):
                return 200, self._pull(repo, int(number)).reviews
            case ("POST", ["pulls", number, "reviews"]):
                return 200, self._review(repo, self._pull(repo, int(number)), body)
            case ("PUT", ["pulls", number, "merge"]):
                return 200, self._merge(self._pull(repo, int(number)), body)
        raise ApiError(404, "Not Found")

    def _access_token(self, request: web.Request, installation_id: int) -> dict[str, Any]:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise ApiError(401, "A JSON web token could not be decoded")
        try:
            claims = jwt.decode(auth[7:], self.public_key, algorithms=["RS256"],
                                options={"require": ["iat", "exp", "iss"]}, leeway=0)
        except jwt.PyJWTError as exc:
            raise ApiError(401, f"A JSON web token could not be decoded: {exc}") from None
        now = time.time()
        if str(claims["iss"]) != self.app_id:
            raise ApiError(401, "'Issuer' claim ('iss') must be an Integer or the App's client ID")
        if claims["iat"] > now or claims["exp"] - claims["iat"] > 600:
            raise ApiError(401, "'Expiration time' claim ('exp') is too far in the future")
        if installation_id not in self.installations:
            raise ApiError(404, "Not Found")
        token = "ghs_" + secrets.token_urlsafe(24)
        expires = now + self.token_lifetime_s
        self.tokens[token] = (installation_id, expires)
        return {"token": token, "expires_at": datetime.fromtimestamp(int(expires), UTC).isoformat().replace("+00:00", "Z"),
                "permissions": {"checks": "write", "pull_requests": "write", "contents": "read"},
                "repository_selection": "all"}

    def _authenticate(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() not in ("token", "bearer"):
            raise ApiError(401, "Requires authentication")
        if token == self.personal_token:
            return
        issued = self.tokens.get(token)
        if issued is None or issued[1] <= time.time():
            raise ApiError(401, "Bad credentials")

    def _create_check(self, repo: str, body: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in ("name", "head_sha") if not (body or {}).get(k)]
        if missing:
            raise ApiError(422, f"Invalid request.\n\n\"{missing[0]}\" wasn't supplied.")
        check_id = next(self._ids)
        check = {"id": check_id, "head_sha": body["head_sha"], "name": body["name"], "status": "queued",
                 "conclusion": None, "external_id": body.get("external_id"), "output": {}, "_repo": repo,
                 "_history": []}
        self.check_runs[check_id] = check
        return self._apply_check(check, body)

    def _update_check(self, check_id: int, body: dict[str, Any]) -> dict[str, Any]:
        check = self.check_runs.get(check_id)
        if check is None:
            raise ApiError(404, "Not Found")
        return self._apply_check(check, body)

    def _apply_check(self, check: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        status = body.get("status", check["status"])
        if status not in ("queued", "in_progress", "completed"):
            raise ApiError(422, "Invalid request.", [{"resource": "CheckRun", "field": "status", "code": "invalid"}])
        if status == "completed" and not body.get("conclusion", check["conclusion"]):
            raise ApiError(422, "Invalid request.\n\n\"conclusion\" wasn't supplied.")
        output = body.get("output") or {}
        annotations = output.get("annotations") or []
        if len(annotations) > 50:
            raise ApiError(422, "Invalid request.\n\nOnly 50 annotations are allowed per request.")
        self.annotations[check["id"]] += annotations
        check["status"] = status
        check["conclusion"] = body.get("conclusion", check["conclusion"])
        check["output"] = {k: v for k, v in output.items() if k != "annotations"} or check["output"]
        check["_history"].append(status)
        return self._check_json(check)

    def _check_json(self, check: dict[str, Any]) -> dict[str, Any]:
        public = {k: v for k, v in check.items() if not k.startswith("_")}
        public["output"] = dict(check["output"], annotations_count=len(self.annotations[check["id"]]))
        return public

    def _comment(self, repo: str, number: int, body: dict[str, Any]) -> dict[str, Any]:
        if not (body or {}).get("body"):
            raise ApiError(422, "Validation Failed", [{"resource": "IssueComment", "code": "missing_field",
                                                       "field": "body"}])
        self._pull(repo, number)
        comment_id = next(self._ids)
        now = datetime.now(UTC).isoformat()
        self.comments[comment_id] = {"id": comment_id, "body": body["body"], "created_at": now, "updated_at": now,
                                     "user": {"login": "devart[bot]", "type": "Bot"}, "_repo": repo,
                                     "_number": number, "_edits": 0}
        return _public(self.comments[comment_id])

    def _edit_comment(self, comment_id: int, body: dict[str, Any]) -> dict[str, Any]:
        comment = self.comments.get(comment_id)
        if comment is None:
            raise ApiError(404, "Not Found")
        comment["body"] = body["body"]
        comment["updated_at"] = datetime.now(UTC).isoformat()
        comment["_edits"] += 1
        return _public(comment)

    def _pull(self, repo: str, number: int) -> Pull:
        pull = self.pulls.get((repo, number))
        if pull is None:
            raise ApiError(404, "Not Found")
        return pull

    def _pull_json(self, repo: str, pull: Pull) -> dict[str, Any]:
        return {"number": pull.number, "state": "closed" if pull.merged else pull.state, "title": pull.title,
                "draft": pull.draft, "merged": pull.merged, "mergeable": pull.mergeable,
                "labels": [{"name": label} for label in pull.labels],
                "head": {"sha": pull.head_sha, "ref": "feature", "repo": {"full_name": repo}},
                "base": {"ref": "main", "repo": {"full_name": repo}}}

    def _review(self, repo: str, pull: Pull, body: dict[str, Any]) -> dict[str, Any]:
        comments = body.get("comments") or []
        for comment in comments:
            added = _added(pull.files.get(comment.get("path", ""), ""))
            if comment.get("line") not in added:
                raise ApiError(422, "Unprocessable Entity", [
                    {"resource": "PullRequestReviewComment", "code": "custom", "field": "pull_request_review_thread.line",
                     "message": "could not be resolved"}])
        review = {"id": next(self._ids), "user": {"login": "devart[bot]"}, "state": "COMMENTED",
                  "commit_id": body.get("commit_id"), "body": body.get("body", "")}
        pull.review_comments += [dict(c, review_id=review["id"]) for c in comments]
        return review

    def _merge(self, pull: Pull, body: dict[str, Any]) -> dict[str, Any]:
        if pull.merged or pull.state != "open":
            raise ApiError(405, "Pull Request is not mergeable")
        if body and body.get("sha") and body["sha"] != pull.head_sha:
            raise ApiError(409, "Head branch was modified. Review and try the merge again.")
        if not pull.mergeable:
            raise ApiError(405, "Pull Request is not mergeable")
        pull.merged, pull.merge_sha = True, secrets.token_hex(20)
        return {"sha": pull.merge_sha, "merged": True, "message": "Pull Request successfully merged"}


def _added(patch: str) -> set[int]:
    lines, current = set(), 0
    for text in patch.splitlines():
        if text.startswith("@@"):
            current = int(text.split("+")[1].split(",")[0].split(" ")[0])
        elif text.startswith("+"):
            lines.add(current)
            current += 1
        elif not text.startswith("-"):
            current += 1
    return lines


def _public(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if not k.startswith("_")}


def _rate_headers(remaining: int, reset_in_s: int = 3600) -> dict[str, str]:
    return {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": str(remaining), "x-ratelimit-used": str(5000 - remaining),
            "x-ratelimit-reset": str(int(time.time()) + reset_in_s), "x-ratelimit-resource": "core"}


def _error(exc: ApiError) -> web.Response:
    body: dict[str, Any] = {"message": exc.message, "documentation_url": DOCS, "status": str(exc.status)}
    if exc.errors:
        body["errors"] = exc.errors
    return web.json_response(body, status=exc.status, headers=exc.headers)


class FakeGitHubServer(LoopbackServer):
    """Runs a :class:`FakeGitHub` on a loopback port; ``url`` is what DEVART_GITHUB_API_URL gets."""

    def __init__(self, fake: FakeGitHub) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", fake.handle)
        super().__init__(app)
        self.fake = fake


async def send_webhook(url: str, event: str, payload: dict[str, Any], secret: str, *,
                       delivery: str | None = None, signature: str | None = "sign") -> httpx.Response:
    """POST a delivery as GitHub does; ``signature=None`` leaves the header out, any other string
    than "sign" is sent as it is."""
    body = json.dumps(payload).encode()
    headers: dict[str, str | bytes] = {"Content-Type": "application/json", "X-GitHub-Event": event, "User-Agent": "GitHub-Hookshot/test",
               "X-GitHub-Delivery": delivery or str(uuid.uuid4()), "X-GitHub-Hook-ID": "1"}
    if signature is not None:
        value = sign(secret, body) if signature == "sign" else signature
        headers["X-Hub-Signature-256"] = value.encode("latin-1")  # any byte an attacker may send
    async with httpx.AsyncClient() as client:
        return await client.post(url, content=body, headers=headers)


def pull_request_payload(repo: str, number: int, head_sha: str, *, action: str = "opened", clone_url: str = "",
                         draft: bool = False, title: str = "Add sub", login: str = "ana", user_type: str = "User",
                         labels: tuple[str, ...] = (), installation_id: int | None = 77) -> dict[str, Any]:
    """A ``pull_request`` event payload with the fields GitHub sends that devart reads (and a few more)."""
    owner = repo.split("/")[0]
    payload: dict[str, Any] = {
        "action": action, "number": number,
        "pull_request": {
            "number": number, "title": title, "draft": draft, "state": "open",
            "user": {"login": login, "type": user_type}, "labels": [{"name": label} for label in labels],
            "head": {"sha": head_sha, "ref": "feature", "repo": {"full_name": repo, "clone_url": clone_url}},
            "base": {"sha": "0" * 40, "ref": "main", "repo": {"full_name": repo, "clone_url": clone_url}},
        },
        "repository": {"full_name": repo, "name": repo.split("/")[1], "owner": {"login": owner},
                       "clone_url": clone_url},
        "sender": {"login": login, "type": user_type},
    }
    if installation_id is not None:
        payload["installation"] = {"id": installation_id}
    return payload
