"""Test-side broker helpers: play the control plane (publish tasks and commands, read events)."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from agents.sdk import ControlCommand, Event, TaskMessage
from agents.sdk.connection import connect_robust
from agents.sdk.messages import HEADER_TRACEPARENT, decode_events, event_headers
from agents.sdk.topology import Topology, declare_events_queue, declare_exchanges, declare_pool_queue
from agents.sdk.trust import HEADER_SIGNATURE, REGISTER_PATH, MessageSigner
from control_plane.queue_counts import QueueCounts
from tests.support import loopback

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Received:
    """Every event read so far, with the AMQP headers it came with."""

    def __init__(self) -> None:
        self.events: list[tuple[Event, dict[str, Any]]] = []
        self._changed = asyncio.Condition()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        async with message.process():
            events = decode_events(message.type, message.body)
            async with self._changed:
                self.events.extend((event, dict(event_headers(message.type, message.headers, i) or {}))
                                   for i, event in enumerate(events))
                self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[Event], bool], within: float = 15.0) -> Event:
        """The first event (already read or yet to come) matching ``predicate``."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: any(predicate(e) for e, _ in self.events)), within
            )
            return next(e for e, _ in self.events if predicate(e))

    def matching(self, predicate: Callable[[Event], bool]) -> list[Event]:
        return [e for e, _ in self.events if predicate(e)]

    def headers_of(self, event: Event) -> dict[str, Any]:
        return next(h for e, h in self.events if e is event)


class ControlPlane:
    """Publishes tasks and commands like the real control plane (signed with ``signer``) and records
    every event."""

    def __init__(self, channel: AbstractChannel, topology: Topology, received: Received, signer: MessageSigner,
                 queue_counts: QueueCounts) -> None:
        self.channel = channel
        self.queue_counts = queue_counts
        self.topology = topology
        self.received = received
        self.signer = signer

    async def submit(
        self,
        pool_id: str,
        type: str,
        input: dict[str, Any] | None = None,
        *,
        timeout_s: float = 30.0,
        **fields: Any,
    ) -> TaskMessage:
        task = TaskMessage(
            task_id=fields.pop("task_id", uuid.uuid4()),
            attempt=fields.pop("attempt", 1),
            type=type,
            input=input or {},
            timeout_s=timeout_s,
            pool_id=pool_id,
            **fields,
        )
        await self.publish_raw(pool_id, task.model_dump_json().encode())
        return task

    async def publish_raw(
        self, pool_id: str, body: bytes, headers: dict[str, Any] | None = None, *, signed: bool = True
    ) -> None:
        exchange = await self.channel.get_exchange(self.topology.tasks)
        signature = {HEADER_SIGNATURE: self.signer.sign(body)} if signed else {}
        await exchange.publish(
            aio_pika.Message(
                body,
                headers={HEADER_TRACEPARENT: TRACEPARENT, **signature, **(headers or {})},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=pool_id,
            mandatory=True,
        )

    async def command(self, agent_id: str, command: ControlCommand) -> None:
        exchange = await self.channel.get_exchange(self.topology.control)
        body = command.model_dump_json().encode()
        await exchange.publish(
            aio_pika.Message(body, headers={HEADER_SIGNATURE: self.signer.sign(body)}),
            routing_key=f"agent.{agent_id}",
            mandatory=True,
        )

    async def pool_holds(self, pool_id: str, n: int) -> bool:
        """Whether the pool queue holds ``n`` messages, ready or unacknowledged, as the broker's
        management API counts them: a count a few seconds old, so wait for it (``until``). The
        declare-ok count is no use here: it leaves out unacknowledged messages, and a quorum queue
        answers it with 0 whenever it does not answer the broker's stat query within 250 ms."""
        return await self.queue_counts.messages(self.topology.pool_queue(pool_id)) == n

    async def take_from_pool(self, pool_id: str) -> AbstractIncomingMessage | None:
        """The next ready message of the pool queue, acked, or None: a basic.get, which the queue
        answers however long it takes. With no consumer left (an agent drained), None means the
        queue is empty."""
        queue = await self.channel.declare_queue(self.topology.pool_queue(pool_id), passive=True)
        return await queue.get(no_ack=True, fail=False)

    async def prepare_pool(self, pool_id: str) -> None:
        await declare_pool_queue(self.channel, self.topology, pool_id)


@asynccontextmanager
async def control_plane(amqp_url: str, topology: Topology, signer: MessageSigner) -> AsyncIterator[ControlPlane]:
    connection = await connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel(on_return_raises=True)
        await declare_exchanges(channel, topology)
        events = await declare_events_queue(channel, topology)
        received = Received()
        await events.consume(received.on_message)
        yield ControlPlane(channel, topology, received, signer, QueueCounts.for_broker(None, amqp_url))


async def until(condition: Callable[[], Any], within: float = 15.0, what: str = "condition") -> None:
    """Poll an async or sync ``condition`` until it is truthy, failing after ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class TcpProxy:
    """A TCP relay in front of the broker whose connections the test can cut, like a network fault."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._holding = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """Drop every relayed connection; new ones are accepted again."""
        for writer in list(self._writers):
            writer.transport.abort()

    def hold(self) -> None:
        """From now on, what clients send is taken and never passed on (what the broker sends still is):
        a client's writes go nowhere, as in a stalled network, without its connection dropping."""
        self._holding = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        self._writers |= {client_writer, upstream_writer}
        try:
            await asyncio.gather(
                _pipe(client_reader, upstream_writer, held=lambda: self._holding),
                _pipe(upstream_reader, client_writer),
                return_exceptions=True,
            )
        finally:
            for writer in (client_writer, upstream_writer):
                self._writers.discard(writer)
                writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                held: Callable[[], bool] = lambda: False) -> None:
    try:
        while data := await reader.read(65536):
            if held():
                continue
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()


@asynccontextmanager
async def registration_server(signer: MessageSigner) -> AsyncIterator[str]:
    """``POST /api/v1/agents/register`` as the control plane answers it (any token, a fresh key),
    on a free loopback port, for agents started as processes; yields the base URL."""
    from aiohttp import web

    async def register(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"agent_id": body["agent_id"], "event_key": base64.b64encode(os.urandom(32)).decode(),
                                  "control_plane_key": base64.b64encode(signer.public_key).decode()})

    app = web.Application()
    app.router.add_post(REGISTER_PATH, register)
    async with loopback.serve(app) as origin:
        yield origin
