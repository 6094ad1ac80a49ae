"""Single-task submissions of concurrent requests share transactions, and one task's failure stays its own."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from control_plane import tasks as task_store
from control_plane.auth import Principal
from control_plane.db import APP_ROLE, create_pool
from control_plane.service import ControlPlane
from control_plane.settings import Settings
from control_plane.submissions import Submissions
from tests.support.system import client, make_token

NOOP = {"type": "noop", "requires": ["noop"]}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # one transaction at a time: whatever arrives while it is written waits for the next one
    return settings.model_copy(update={"submit_transactions_max": 1})


async def test_concurrent_submissions_share_transactions_with_every_row_of_each_task(
    base_url: str, database_url: str, db: asyncpg.Pool
) -> None:
    ci, admin = await make_token(database_url, "ci"), await make_token(database_url, "admin")
    async with client(base_url, ci) as ci_client, client(base_url, admin) as admin_client:

        async def submit(http: httpx.AsyncClient, i: int) -> httpx.Response:
            return await http.post("/api/v1/tasks", json={**NOOP, "timeout_s": 10 + i})

        answers = await asyncio.gather(*(submit(ci_client if i % 4 else admin_client, i) for i in range(32)))
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers if a.status_code != 201]
    assert [a.json()["timeout_s"] for a in answers] == [10 + i for i in range(32)]  # each answer is its own task
    ids = [uuid.UUID(a.json()["id"]) for a in answers]
    rows = await db.fetch("SELECT id, created_by, xmin::text AS tx FROM tasks WHERE id = ANY($1::uuid[])", ids)
    assert len(rows) == 32
    transactions = {row["tx"] for row in rows}
    assert len(transactions) < 32, "no two submissions shared a transaction"
    for tx in transactions:  # a transaction holds one caller's tasks
        assert len({row["created_by"] for row in rows if row["tx"] == tx}) == 1
    assert {row["created_by"] for row in rows} == {"ci-token", "admin-token"}
    # the same rows as a submission alone: history, audit (no pool is live, so no attempt or message yet)
    assert await db.fetchval(
        "SELECT count(*) FROM task_transitions WHERE task_id = ANY($1::uuid[]) AND to_status = 'pending'", ids) == 32
    assert await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'task.create' AND target = ANY($1::text[])",
        [str(i) for i in ids]) == 32


def _new(cp: ControlPlane, task_input: dict) -> task_store.NewTask:
    s = cp.settings
    return task_store.NewTask(
        type="noop", input=task_input, requires=["noop"], timeout_s=10.0, max_attempts=1,
        backoff={"base_s": 1.0, "factor": 2.0, "cap_s": 10.0, "jitter": 0.0}, sandbox={},
        start_timeout_s=s.default_start_timeout_s,
    )


async def test_a_task_that_fails_its_shared_transaction_fails_alone(cp: ControlPlane, db: asyncpg.Pool) -> None:
    who = Principal(uuid.uuid4(), "ci-caller", "ci")
    by = task_store.Submitter(created_by=who.name, traceparent=None, topology=cp.topology,
                              agent_ttl_s=cp.settings.heartbeat_ttl_s)
    # a NUL character is text Postgres cannot store (the API refuses it earlier; here it reaches the
    # database and aborts the transaction it is in); a reused key with another body is refused before any write
    first = await cp.submissions.submit(who, _new(cp, {"n": -1}), by, idempotency_key="key")
    inputs = [{"n": i} for i in range(12)]
    inputs[5] = {"n": "\u0000"}
    outcomes = await asyncio.gather(
        *(cp.submissions.submit(who, _new(cp, data), by, idempotency_key=None) for data in inputs),
        cp.submissions.submit(who, _new(cp, {"n": "other"}), by, idempotency_key="key"),
        cp.submissions.submit(who, _new(cp, {"n": -1}), by, idempotency_key="key"),
        return_exceptions=True,
    )
    assert isinstance(outcomes[5], asyncpg.UntranslatableCharacterError), outcomes[5]
    conflict, replay = outcomes[-2:]
    assert type(conflict).__name__ == "Conflict" and "Idempotency-Key" in str(conflict.message), conflict
    # the same task (the first's row also carries the outbox row it wrote, for its direct publish)
    assert replay[1] is True and dict(replay[0]).items() <= dict(first[0]).items(), (replay, first)
    created = [o for i, o in enumerate(outcomes[:-2]) if i != 5]
    assert all(isinstance(o, tuple) and o[1] is False for o in created), created
    # each good task exists once: the failed shared transaction left nothing behind
    rows = await db.fetch("SELECT (input ->> 'n')::int AS n FROM tasks WHERE created_by = 'ci-caller'")
    assert sorted(r["n"] for r in rows) == [-1, *(i for i in range(12) if i != 5)]


_COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # the simple query transaction_as ends with


@asynccontextmanager
async def _cut_after_first_commit(database_url: str) -> AsyncIterator[str]:
    """``database_url`` through a proxy that, once, lets a COMMIT reach Postgres and be carried out,
    then drops the client's connection instead of passing the answer on."""
    parts = urlsplit(database_url)
    upstream = next(pathlib.Path(parse_qs(parts.query)["host"][0]).glob(".s.PGSQL.*"))
    here = pathlib.Path(tempfile.mkdtemp(prefix="devart-cut-", dir="/tmp"))
    cut = asyncio.Event()
    committed = asyncio.Event()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, to_server: bool) -> None:
        while data := await reader.read(65536):
            if to_server and _COMMIT in data and not cut.is_set():
                cut.set()
            elif not to_server and cut.is_set() and not committed.is_set():
                committed.set()  # Postgres answered the COMMIT: it is done; the client never hears of it
                writer.transport.abort()
                return
            writer.write(data)
            await writer.drain()
        writer.close()  # one side hung up: so does the other

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_unix_connection(upstream)
        with contextlib.suppress(OSError):
            await asyncio.gather(pump(client_reader, server_writer, to_server=True),
                                 pump(server_reader, client_writer, to_server=False))
        server_writer.close()
        client_writer.close()

    server = await asyncio.start_unix_server(relay, here / upstream.name)
    try:
        yield urlunsplit(parts._replace(query=urlencode({"host": str(here)})))
        assert committed.is_set(), "no COMMIT went through the proxy"
    finally:
        server.close()
        shutil.rmtree(here, ignore_errors=True)


async def test_a_connection_lost_at_commit_creates_nothing_again(cp: ControlPlane, db: asyncpg.Pool) -> None:
    """The COMMIT went through, its answer was lost: the transaction may have committed, so each of
    its requests gets the error and its task exists once (created again, it existed twice)."""
    who = Principal(uuid.uuid4(), "cut-caller", "ci")
    by = task_store.Submitter(created_by=who.name, traceparent=None, topology=cp.topology,
                              agent_ttl_s=cp.settings.heartbeat_ttl_s)
    async with _cut_after_first_commit(cp.database.app_url) as url:
        pool = await create_pool(url, role=APP_ROLE, min_size=1, max_size=2)
        try:
            submissions = Submissions(pool, cp.input_schemas, max_tasks=64, max_transactions=1)
            outcomes = await asyncio.gather(
                *(submissions.submit(who, _new(cp, {"n": i}), by, idempotency_key=None) for i in range(4)),
                return_exceptions=True)
        finally:
            await pool.close()
    rows = await db.fetch("SELECT (input ->> 'n')::int AS n FROM tasks WHERE created_by = 'cut-caller'")
    assert sorted(r["n"] for r in rows) == list(range(4))  # the lost commit's tasks too, once each
    lost = [o for o in outcomes if isinstance(o, BaseException)]
    assert lost and all(isinstance(o, asyncpg.PostgresConnectionError | asyncpg.InterfaceError) for o in lost), outcomes
