"""Domain errors: plain exceptions that the API maps to HTTP status codes in one place."""

from __future__ import annotations


class DomainError(Exception):
    """Base of errors a client caused; ``field`` names the offending input when there is one.

    An API request's transaction rolls back when its route raises one, unless ``recorded`` is set:
    the route undid the refused change itself (a savepoint) and wrote why it refused (an audit
    row), which must outlive the refusal, so the request's transaction commits before the answer.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.recorded = False


class NotFound(DomainError):
    pass


class Conflict(DomainError):
    """The request contradicts current state (wrong status, reused idempotency key)."""


class InvalidInput(DomainError):
    pass


class Forbidden(DomainError):
    pass


class Unauthorized(DomainError):
    pass


class TooManyRequests(DomainError):
    """A limit on concurrent use (open streams) is reached; the client should retry later."""


class PayloadTooLarge(DomainError):
    """A request body over a configured limit (the message names the limit)."""


class UnsupportedMediaType(DomainError):
    """A request body in a format the endpoint does not take."""


class Unavailable(DomainError):
    """Something the request depends on does not answer (the Supabase JWKS); the client may retry."""


_HTTP_STATUS: dict[type[DomainError], int] = {
    NotFound: 404, Conflict: 409, InvalidInput: 422, Forbidden: 403, Unauthorized: 401, TooManyRequests: 429,
    Unavailable: 503, PayloadTooLarge: 413, UnsupportedMediaType: 415,
}


def http_status(exc: DomainError) -> int:
    """The HTTP status of a domain error, for every surface that answers over HTTP (API and console)."""
    return _HTTP_STATUS.get(type(exc), 400)
