"""Task submissions: single tasks of concurrent requests written together (group commit), and batches.

A ``POST /api/v1/tasks`` in a request transaction of its own costs BEGIN, the identity switch, the
create statement and COMMIT: four round trips and a WAL flush per task. Here a request hands its task
to :class:`Submissions` and waits; the tasks of one caller that arrive while earlier transactions are
being written go into one transaction together: BEGIN with the identity switch (one round trip,
``identity.transaction_as``), one create statement for all its tasks (``tasks.create_each``), COMMIT.
A request is answered only once the transaction holding its task has committed, so an answered task
is as durable as before, with the same rows (task, history, attempt, outbox message, audit row).
A ``POST /api/v1/tasks/batch`` is written the same way in a transaction of its own
(:meth:`Submissions.submit_batch`), all or none.

Once committed, the tasks' messages are handed to ``on_committed`` (the process's relay publishes
them from memory, :meth:`control_plane.outbox.OutboxRelay.publish_committed`), written leased to
this process for ``lease_s`` so no other relay claims them meanwhile; with ``lease_s`` 0 they are
due at once and any relay publishes them.

Nothing waits for a window: with fewer than ``max_transactions`` transactions being written, a task
starts one at once (at light load, a transaction of one task, as before). A shared transaction that
fails is not the failure of its tasks: each is then created again in a transaction of its own, so an
error (a database that refused the row) reaches its own request only; a task refused before any
write (bad input, a key reused with another body) is refused alone while the others are written.
But for a connection lost at COMMIT: the transaction may have committed, so each of its requests gets
that error (as a request in a transaction of its own would) and nothing is created again. A
transaction aborted because a concurrent one committed one of its idempotency keys first is written
once more, its tasks then replays.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
from opentelemetry import context as otel_context

from control_plane import identity
from control_plane import tasks as task_store
from control_plane.auth import Principal
from control_plane.errors import DomainError
from control_plane.outbox import Outbound
from control_plane.schemas import InputSchemas

log = logging.getLogger("devart.submissions")

Created = task_store.Created
T = TypeVar("T")

_CONNECTION_LOST = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError, TimeoutError)


@dataclass
class _Submission:
    who: Principal
    task: task_store.NewTask
    by: task_store.Submitter
    idempotency_key: str | None
    context: otel_context.Context
    """The request's trace context: the task's create statement is a span of the request's trace."""
    answer: asyncio.Future[Created] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def caller(self) -> str:
        """Submissions with the same caller identity may share a transaction."""
        return json.dumps(identity.claims(self.who), sort_keys=True)


class Submissions:
    """Writes the tasks of concurrent single-task submissions in shared transactions."""

    def __init__(
        self, pool: asyncpg.Pool, input_schemas: InputSchemas, *, max_tasks: int, max_transactions: int,
        lease_s: float = 0.0, on_committed: Callable[[list[Outbound]], None] = lambda _: None,
    ) -> None:
        self._pool = pool
        self._lease_s = lease_s
        self._on_committed = on_committed
        """Called after each commit with the committed task messages, before the requests are answered."""
        self._input_schemas = input_schemas
        self._max_tasks = max_tasks
        self._max_transactions = max_transactions
        self._waiting: list[_Submission] = []
        self._writing: set[asyncio.Task[None]] = set()

    async def submit(
        self, who: Principal, task: task_store.NewTask, by: task_store.Submitter, *, idempotency_key: str | None
    ) -> Created:
        """Validate ``task``'s input against the live pools' schemas and create it as ``who``, once
        the transaction holding it has committed; raises what creating it alone would raise."""
        submission = _Submission(who, task, by, idempotency_key, otel_context.get_current())
        self._waiting.append(submission)
        self._start_writing()
        return await submission.answer

    def _start_writing(self) -> None:
        while self._waiting and len(self._writing) < self._max_transactions:
            caller = self._waiting[0].caller
            group = [s for s in self._waiting if s.caller == caller][: self._max_tasks]
            taken = {id(s) for s in group}
            self._waiting = [s for s in self._waiting if id(s) not in taken]
            # not in the context of whichever request or writer started it: _traced says whose it is
            writer = asyncio.create_task(self._write(group), name="submissions", context=contextvars.Context())
            self._writing.add(writer)
            writer.add_done_callback(self._written)

    def _written(self, writer: asyncio.Task[None]) -> None:
        self._writing.discard(writer)
        self._start_writing()

    async def _write(self, group: list[_Submission]) -> None:
        created: list[Created | DomainError] = []
        try:
            await self._create_together(group, created)
        except Exception as exc:  # noqa: BLE001 - any failure of the shared transaction: each task alone
            if len(created) == len(group) and isinstance(exc, _CONNECTION_LOST):
                # lost at COMMIT, which may have committed: created again, each task could exist twice
                log.warning("a shared submit transaction of %d tasks lost its connection at COMMIT (%s)", len(group), exc)
                for submission in group:
                    _answer(submission, exc)
                return
            if len(group) > 1:
                log.info("a shared submit transaction of %d tasks failed (%s); creating each alone", len(group), exc)
            for submission in group:
                await self._create_alone(submission)
            return

    async def _create_together(self, group: list[_Submission], outcomes: list[Created | DomainError]) -> None:
        """The tasks' outcomes are put in ``outcomes`` once they are written: there, the failure was at COMMIT."""
        # the transaction's own statements, the create statement of its tasks too, are spans of the first request's trace
        with _traced(group[0]):
            async with self._pool.acquire() as conn:
                async with identity.transaction_as(conn, group[0].who):
                    outcomes.extend(await self._create(conn, group))
                self._committed(group, outcomes)  # before the connection's release, which takes a round of the loop

    async def _create_alone(self, submission: _Submission) -> None:
        try:
            with _traced(submission):
                outcomes = await _once_more_on_race(lambda: self._write_alone(submission))
                self._committed([submission], outcomes)
        except Exception as exc:  # noqa: BLE001 - handed to the request, whose handlers map it
            _answer(submission, exc)

    async def _write_alone(self, submission: _Submission) -> list[Created | DomainError]:
        async with self._pool.acquire() as conn:
            async with identity.transaction_as(conn, submission.who):
                return await self._create(conn, [submission])

    def _committed(self, group: list[_Submission], outcomes: list[Created | DomainError]) -> None:
        self._on_committed([message for submission, outcome in zip(group, outcomes, strict=True)
                            if not isinstance(outcome, DomainError)
                            and (message := task_store.task_message(outcome[0], submission.by)) is not None])
        # Answered in the event loop's next round: the publish just started queues its frames for the
        # broker connection's writer first, which then writes them before the requests' responses are made.
        for submission, outcome in zip(group, outcomes, strict=True):
            asyncio.get_running_loop().call_soon(_answer, submission, outcome)

    async def _create(self, conn: asyncpg.Connection, group: list[_Submission]) -> list[Created | DomainError]:
        """Each submission's task, or why it was refused before any write (bad input, a key reused),
        while the others go on; all of them in one create statement."""
        refused: list[DomainError | None] = []
        for submission in group:
            with _traced(submission):
                task = submission.task
                try:
                    await self._input_schemas.validate(conn, type=task.type, requires=task.requires, data=task.input)
                    refused.append(None)
                except DomainError as exc:
                    refused.append(exc)
        created = iter(await task_store.create_each(
            conn, [task_store.Creation(s.task, s.by, s.idempotency_key) for s, error in zip(group, refused, strict=True)
                   if error is None],
            lease_s=self._lease_s,
        ))
        return [error if error is not None else next(created) for error in refused]

    async def submit_batch(
        self, who: Principal, tasks: list[task_store.NewTask], by: task_store.Submitter, *, idempotency_key: str | None
    ) -> tuple[list[asyncpg.Record], bool]:
        """Validate ``tasks``' inputs (a refusal names ``body.tasks.<i>.input``) and create them all or
        none as ``who``, in a transaction of their own (a batch is a group already); their messages
        are handed to ``on_committed`` once committed, as single submissions' are."""

        async def write() -> tuple[list[asyncpg.Record], bool]:
            async with self._pool.acquire() as conn:
                async with identity.transaction_as(conn, who):
                    for i, task in enumerate(tasks):
                        await self._input_schemas.validate(conn, type=task.type, requires=task.requires,
                                                           data=task.input, field=f"body.tasks.{i}.input")
                    rows, replayed = await task_store.create_tasks(conn, tasks, by, idempotency_key=idempotency_key,
                                                                   lease_s=self._lease_s)
                self._on_committed([message for row in rows if (message := task_store.task_message(row, by)) is not None])
            return rows, replayed

        return await _once_more_on_race(write)


async def _once_more_on_race(write: Callable[[], Awaitable[T]]) -> T:
    """Run ``write`` (one transaction) again when a concurrent transaction committed one of its
    idempotency keys first, which aborted it: written again, its tasks are replays."""
    try:
        return await write()
    except asyncpg.UniqueViolationError:
        return await write()


@contextmanager
def _traced(submission: _Submission) -> Iterator[None]:
    """Statements run inside are spans of ``submission``'s request (the query logger reads the context)."""
    token = otel_context.attach(submission.context)
    try:
        yield
    finally:
        otel_context.detach(token)


def _answer(submission: _Submission, outcome: Created | BaseException) -> None:
    if submission.answer.done():  # the request went away; its task exists all the same
        return
    if isinstance(outcome, BaseException):
        submission.answer.set_exception(outcome)
    else:
        submission.answer.set_result(outcome)
