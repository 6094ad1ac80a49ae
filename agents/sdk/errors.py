"""Exceptions through which a handler says whether its task should be retried.

A plain exception from a handler counts as retryable with the task's configured backoff.
"""

from __future__ import annotations


class RetryableError(Exception):
    """The attempt failed but another may succeed; ``delay`` (seconds) overrides the backoff."""

    def __init__(self, message: str = "", *, delay: float | None = None) -> None:
        super().__init__(message)
        if delay is not None and delay < 0:
            raise ValueError("delay must be >= 0")
        self.delay = delay


class NonRetryableError(Exception):
    """The task can never succeed as submitted: no further attempt is made."""
