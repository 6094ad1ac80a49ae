"""Terminal events of several tasks in one broker message.

An agent's terminal events wait up to ``window_s`` for others, and while one batch waits for the
broker's confirm the next gathers; a batch goes out as one persistent, confirmed message signed as
a whole (``agents.sdk.messages``: event batch). A lone event goes out as the plain message it
always was. Every sender returns once the broker confirmed the message carrying its event, or gets
the failure, so the runtime acks a task's delivery only after its result is safe, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from agents.sdk.messages import BATCH_TYPE, HEADER_TRACEPARENT, HEADER_TRACEPARENTS, batch_routing_key
from agents.sdk.publisher import ConfirmedPublisher
from agents.sdk.trust import HEADER_SIGNATURE


@dataclass(frozen=True)
class Outgoing:
    """One event, serialised and signed, with the AMQP message it would be on its own."""

    body: bytes
    routing_key: str
    kind: str
    headers: dict[str, object]
    """Its trace headers and signature."""


class EventBatcher:
    def __init__(
        self, publisher: ConfirmedPublisher, exchange: str, agent_id: str, sign: Callable[[bytes], str], *,
        window_s: float, max_events: int,
    ) -> None:
        self._publisher = publisher
        self._exchange = exchange
        self._agent_id = agent_id
        self._sign = sign
        self._window_s = window_s
        self._max = max_events
        self._pending: list[tuple[Outgoing, asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def send(self, event: Outgoing) -> None:
        """Return once the broker confirmed the message that carries ``event``; raise what publishing raised."""
        done = asyncio.get_running_loop().create_future()
        self._pending.append((event, done))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_pending(), name="agent-event-batches")
        await done

    async def _send_pending(self) -> None:
        await asyncio.sleep(self._window_s)
        while self._pending:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            try:
                await self._publish([event for event, _ in batch])
            except Exception as exc:  # every waiter decides what a failed publish means for it
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _publish(self, events: list[Outgoing]) -> None:
        if len(events) == 1:
            one = events[0]
            await self._publisher.publish(self._exchange, one.routing_key, one.body, one.headers, message_type=one.kind)
            return
        body = b"[" + b",".join(e.body for e in events) + b"]"
        headers: dict[str, object] = {
            HEADER_SIGNATURE: self._sign(body),
            HEADER_TRACEPARENTS: [str(e.headers.get(HEADER_TRACEPARENT, "")) for e in events],
        }
        await self._publisher.publish(self._exchange, batch_routing_key(self._agent_id), body, headers,
                                      message_type=BATCH_TYPE)
