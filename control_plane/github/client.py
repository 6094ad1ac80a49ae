"""The GitHub calls devart makes, behind one narrow port, and its githubkit implementation.

githubkit builds and validates the requests (typed bodies, auth headers, the base URL) and
classifies failures (rate limits with their wait); answers are read for the few fields devart
uses, from the JSON, so a field GitHub adds or a model githubkit tightens changes nothing here.

Everything else in devart talks to :class:`GitHubPort` with plain values (:class:`PullRequest`,
:class:`Review`, :class:`ChangedFile`) and catches :class:`GitHubError`; a schema change upstream
touches this module only. Authentication is a GitHub App (an RS256 JWT, ``iat`` 60 s in the past,
``exp`` 9 min ahead, ``iss`` the App id, exchanged for an installation token that is cached per
installation and renewed ``token_refresh_margin_s`` before it expires) or one personal token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

import jwt
from githubkit import GitHub
from githubkit.exception import RateLimitExceeded, RequestError, RequestFailed, RequestTimeout

from control_plane.github.settings import GitHubSettings

T = TypeVar("T")
JWT_BACKDATE_S = 60
JWT_LIFETIME_S = 540


@dataclass(frozen=True)
class PullRequest:
    number: int
    head_sha: str
    state: str
    draft: bool
    merged: bool
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Review:
    user: str
    state: str
    commit_id: str | None


@dataclass(frozen=True)
class ChangedFile:
    path: str
    status: str
    patch: str | None


class GitHubError(Exception):
    """A call GitHub refused or that did not reach it; ``status`` 0 means no answer."""

    def __init__(self, status: int, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status, self.message, self.retry_after_s = status, message, retry_after_s

    @property
    def permanent(self) -> bool:
        """A refusal that repeating will not change (not a rate limit, a timeout or a 5xx)."""
        return self.retry_after_s is None and 400 <= self.status < 500 and self.status not in (408, 429)


class GitHubPort(Protocol):
    async def create_check_run(self, installation_id: int | None, repo: str, *, name: str, head_sha: str,
                               external_id: str, status: str, conclusion: str | None,
                               output: dict[str, Any]) -> int: ...

    async def update_check_run(self, installation_id: int | None, repo: str, check_run_id: int, *, status: str,
                               conclusion: str | None, output: dict[str, Any]) -> None: ...

    async def create_comment(self, installation_id: int | None, repo: str, number: int, body: str) -> int: ...

    async def update_comment(self, installation_id: int | None, repo: str, comment_id: int, body: str) -> None: ...

    async def pull_request(self, installation_id: int | None, repo: str, number: int) -> PullRequest: ...

    async def _pages(self, installation_id: int | None, list_page: Callable[[Any, int], Awaitable[Any]],
                     max_pages: int) -> list[dict[str, Any]]:
        """Every item of a listing, 100 per page, at most ``max_pages`` pages."""
        items: list[dict[str, Any]] = []
        for page in range(1, max_pages + 1):
            batch = (await self._rest(installation_id, lambda r, p=page: list_page(r, p))).json()
            items += batch
            if len(batch) < 100:
                break
        return items

    async def pull_files(self, installation_id: int | None, repo: str, number: int) -> list[ChangedFile]:
        owner, name = _split(repo)
        files = await self._pages(installation_id, lambda r, p: r.pulls.async_list_files(
            owner, name, number, per_page=100, page=p), max_pages=30)  # GitHub lists at most 3000 files
        return [ChangedFile(path=str(f["filename"]), status=str(f["status"]), patch=f.get("patch") or None)
                for f in files]

    async def reviews(self, installation_id: int | None, repo: str, number: int) -> list[Review]:
        owner, name = _split(repo)
        reviews = await self._pages(installation_id, lambda r, p: r.pulls.async_list_reviews(
            owner, name, number, per_page=100, page=p), max_pages=100)
        return [Review(user=str((rv.get("user") or {}).get("login") or ""), state=str(rv["state"]),
                       commit_id=rv.get("commit_id") or None) for rv in reviews]

    async def create_review(self, installation_id: int | None, repo: str, number: int, *, commit_id: str, body: str,
                            comments: list[dict[str, Any]]) -> None: ...

    async def merge(self, installation_id: int | None, repo: str, number: int, *, sha: str, method: str,
                    title: str) -> str: ...


def app_jwt(app_id: str, private_key: str, *, now: float | None = None) -> str:
    """The App's own JWT: RS256, issued 60 s in the past (clock drift), valid 9 minutes (GitHub allows 10)."""
    issued = int(now if now is not None else time.time()) - JWT_BACKDATE_S
    return jwt.encode({"iat": issued, "exp": issued + JWT_BACKDATE_S + JWT_LIFETIME_S, "iss": app_id},
                      private_key, algorithm="RS256")


class InstallationTokens:
    """Installation tokens per installation id, renewed ``margin_s`` before they expire; one request
    at a time per installation, so a burst of calls asks GitHub once."""

    def __init__(self, settings: GitHubSettings, request: Callable[[int, str], Awaitable[tuple[str, datetime]]]) -> None:
        if settings.app_id is None:
            raise ValueError("an App id is needed for installation tokens")
        self._app_id = settings.app_id
        self._key = settings.pem() or ""
        self._margin_s = settings.token_refresh_margin_s
        self._request = request
        self._tokens: dict[int, tuple[str, float]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self.issued = 0
        """Tokens asked of GitHub so far."""

    async def token(self, installation_id: int) -> str:
        async with self._locks.setdefault(installation_id, asyncio.Lock()):
            cached = self._tokens.get(installation_id)
            if cached is not None and cached[1] - self._margin_s > time.time():
                return cached[0]
            token, expires_at = await self._request(installation_id, app_jwt(self._app_id, self._key))
            self.issued += 1
            self._tokens[installation_id] = (token, expires_at.timestamp())
            return token

    def forget(self, installation_id: int) -> None:
        """Drop a token GitHub no longer accepts (revoked, or the installation's permissions changed)."""
        self._tokens.pop(installation_id, None)


class GitHubKitClient:
    """:class:`GitHubPort` over githubkit, at ``api_url``; retries and rate-limit waits are the
    caller's (the reporter reschedules), so githubkit's own are off."""

    def __init__(self, settings: GitHubSettings) -> None:
        self._settings = settings
        self.tokens = InstallationTokens(settings, self._installation_token) if settings.app_id else None
        self._personal = settings.token.get_secret_value() if settings.token is not None else None

    def _client(self, auth: str | None) -> GitHub[Any]:
        return GitHub(auth, base_url=self._settings.api_url, auto_retry=False, http_cache=False,
                      timeout=self._settings.request_timeout_s, user_agent="devart")

    async def _installation_token(self, installation_id: int, app_token: str) -> tuple[str, datetime]:
        github = self._client(None)  # githubkit's namespaces hold their client weakly: keep it alive
        response = await _call(lambda: github.rest.apps.async_create_installation_access_token(
            installation_id, headers={"Authorization": f"Bearer {app_token}"}))
        data = response.json()
        return str(data["token"]), datetime.fromisoformat(str(data["expires_at"]).replace("Z", "+00:00"))

    async def _github(self, installation_id: int | None) -> GitHub[Any]:
        if self.tokens is not None and installation_id is not None:
            return self._client(await self.tokens.token(installation_id))
        if self._personal is None:
            raise GitHubError(0, "no credentials: set DEVART_GITHUB_APP_ID and a private key, or DEVART_GITHUB_TOKEN "
                                 "(an App needs the delivery's installation id)")
        return self._client(self._personal)

    async def _rest(self, installation_id: int | None, call: Callable[[Any], Awaitable[T]]) -> T:
        github = await self._github(installation_id)
        try:
            return await _call(lambda: call(github.rest))
        except GitHubError as exc:
            if exc.status == 401 and self.tokens is not None and installation_id is not None:
                self.tokens.forget(installation_id)
            raise

    async def create_check_run(self, installation_id: int | None, repo: str, *, name: str, head_sha: str,
                               external_id: str, status: str, conclusion: str | None,
                               output: dict[str, Any]) -> int:
        owner, name_ = _split(repo)
        data: dict[str, Any] = {"name": name, "head_sha": head_sha, "external_id": external_id, "status": status,
                                "output": output}
        if conclusion is not None:
            data["conclusion"] = conclusion
        response = await self._rest(installation_id, lambda r: r.checks.async_create(owner, name_, data=data))
        return int(response.json()["id"])

    async def update_check_run(self, installation_id: int | None, repo: str, check_run_id: int, *, status: str,
                               conclusion: str | None, output: dict[str, Any]) -> None:
        owner, name = _split(repo)
        data: dict[str, Any] = {"status": status, "output": output}
        if conclusion is not None:
            data["conclusion"] = conclusion
        await self._rest(installation_id, lambda r: r.checks.async_update(owner, name, check_run_id, data=data))

    async def create_comment(self, installation_id: int | None, repo: str, number: int, body: str) -> int:
        owner, name = _split(repo)
        response = await self._rest(installation_id,
                                    lambda r: r.issues.async_create_comment(owner, name, number, body=body))
        return int(response.json()["id"])

    async def update_comment(self, installation_id: int | None, repo: str, comment_id: int, body: str) -> None:
        owner, name = _split(repo)
        await self._rest(installation_id, lambda r: r.issues.async_update_comment(owner, name, comment_id, body=body))

    async def pull_request(self, installation_id: int | None, repo: str, number: int) -> PullRequest:
        owner, name = _split(repo)
        pr = (await self._rest(installation_id, lambda r: r.pulls.async_get(owner, name, number))).json()
        return PullRequest(number=int(pr["number"]), head_sha=str(pr["head"]["sha"]), state=str(pr["state"]),
                           draft=bool(pr.get("draft")), merged=bool(pr.get("merged")),
                           labels=tuple(str(label["name"]) for label in pr.get("labels") or []))

    async def pull_files(self, installation_id: int | None, repo: str, number: int) -> list[ChangedFile]:
        owner, name = _split(repo)
        files: list[ChangedFile] = []
        page = 1
        while True:
            batch = (await self._rest(installation_id, lambda r, p=page: r.pulls.async_list_files(
                owner, name, number, per_page=100, page=p))).json()
            files += [ChangedFile(path=str(f["filename"]), status=str(f["status"]), patch=f.get("patch") or None)
                      for f in batch]
            if len(batch) < 100 or page >= 30:  # GitHub lists at most 3000 files
                return files
            page += 1

    async def reviews(self, installation_id: int | None, repo: str, number: int) -> list[Review]:
        owner, name = _split(repo)
        found: list[Review] = []
        page = 1
        while True:
            batch = (await self._rest(installation_id, lambda r, p=page: r.pulls.async_list_reviews(
                owner, name, number, per_page=100, page=p))).json()
            found += [Review(user=str((rv.get("user") or {}).get("login") or ""), state=str(rv["state"]),
                             commit_id=rv.get("commit_id") or None) for rv in batch]
            if len(batch) < 100:
                return found
            page += 1

    async def create_review(self, installation_id: int | None, repo: str, number: int, *, commit_id: str, body: str,
                            comments: list[dict[str, Any]]) -> None:
        owner, name = _split(repo)
        await self._rest(installation_id, lambda r: r.pulls.async_create_review(
            owner, name, number, commit_id=commit_id, body=body, event="COMMENT", comments=comments))

    async def merge(self, installation_id: int | None, repo: str, number: int, *, sha: str, method: str,
                    title: str) -> str:
        owner, name = _split(repo)
        response = await self._rest(installation_id, lambda r: r.pulls.async_merge(
            owner, name, number, sha=sha, merge_method=method, commit_title=title))
        return str(response.json()["sha"])


def _split(repo: str) -> tuple[str, str]:
    owner, _, name = repo.partition("/")
    return owner, name


async def _call(call: Callable[[], Awaitable[T]]) -> T:
    """One githubkit call, its failures as :class:`GitHubError` with GitHub's own message."""
    try:
        return await call()
    except RateLimitExceeded as exc:
        raise GitHubError(exc.response.status_code, _message(exc),
                          retry_after_s=max(1.0, exc.retry_after.total_seconds())) from None
    except RequestFailed as exc:
        raise GitHubError(exc.response.status_code, _message(exc)) from None
    except RequestTimeout as exc:
        raise GitHubError(0, f"timed out: {exc.request.method} {exc.request.url}") from None
    except RequestError as exc:
        raise GitHubError(0, f"cannot reach GitHub: {exc.exc}") from None


def _message(exc: RequestFailed) -> str:
    try:
        body = exc.response.json()
    except ValueError:
        return exc.response.raw_response.text[:300]
    if not isinstance(body, dict):
        return str(body)[:300]
    message = str(body.get("message", ""))
    details = [e.get("message") or e.get("code") for e in body.get("errors") or [] if isinstance(e, dict)]
    return (message + (": " + "; ".join(str(d) for d in details if d) if details else ""))[:500]
