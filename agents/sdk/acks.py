"""Acks of task deliveries, several in one ``basic.ack(multiple=True)`` frame where that is exact.

The runtime acks a delivery once the result it carries was confirmed by the broker; results of
several tasks are confirmed together (``agents.sdk.batcher``), so their acks arrive together too.
Acks asked for in one turn of the event loop go out after it as few frames as possible: an ack
with ``multiple=True`` settles every outstanding delivery up to its tag, so it is sent only for a
run of consecutive tags each of which is being acked now or was settled already (tags of a channel
are consecutive from 1); any other tag gets an ack of its own. A delivery the runtime has not
settled, or has never seen, stops the run, so nothing is ever acked that was not asked for.

An ack is sent after the turn, not awaited: a process killed before it is written leaves the
delivery unacked, and the broker redelivers it, as it would a delivery killed a moment earlier.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import aio_pika
from aiormq.abc import AbstractChannel, DeliveredMessage

log = logging.getLogger("devart.agent")


_MAX_ABOVE = 10_000
"""Settled tags remembered above an unsettled one (a long task's); past that they are forgotten,
which only means acks above that tag go out one by one."""


@dataclass
class _Channel:
    """What is settled on one channel: every tag up to ``floor``, and ``above`` the floor."""

    floor: int = 0
    above: set[int] = field(default_factory=set)

    def settled(self, tag: int) -> None:
        if len(self.above) >= _MAX_ABOVE:
            self.above.clear()
        self.above.add(tag)
        while self.floor + 1 in self.above:
            self.floor += 1
            self.above.discard(self.floor)

    def frames(self, tags: set[int]) -> list[tuple[int, bool]]:
        """(tag, multiple) of the acks that settle ``tags`` and nothing unsettled besides.

        The multiple ack names the highest of ``tags`` in the run: the broker refuses (and closes
        the channel) an ack whose own tag is not outstanding.
        """
        top, last = self.floor, 0
        while top + 1 in tags or top + 1 in self.above:
            top += 1
            if top in tags:
                last = top
        covered = {tag for tag in tags if tag <= last}
        frames = [(last, len(covered) > 1)] if covered else []
        frames += [(tag, False) for tag in sorted(tags - covered)]
        for tag in tags:
            self.settled(tag)
        return frames


class Acker:
    """Acks deliveries of a consumer's channels, coalesced per turn of the event loop."""

    def __init__(self) -> None:
        self._channels: dict[AbstractChannel, _Channel] = {}
        self._due: dict[AbstractChannel, set[int]] = {}
        self._frames: list[tuple[AbstractChannel, int, bool]] = []
        self._sender: asyncio.Task[None] | None = None
        self._scheduled = False

    def ack(self, delivery: DeliveredMessage) -> None:
        """Ack ``delivery`` after this turn of the event loop (a lost channel's is the broker's again)."""
        channel = _open_channel(delivery)
        if channel is None or delivery.delivery_tag is None:
            return
        self._due.setdefault(channel, set()).add(delivery.delivery_tag)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def nack(self, delivery: DeliveredMessage, *, requeue: bool) -> None:
        """Nack ``delivery`` now (a lost channel's is the broker's again)."""
        channel = _open_channel(delivery)
        if channel is None or delivery.delivery_tag is None:
            return
        try:
            await channel.basic_nack(delivery.delivery_tag, requeue=requeue)
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            _not_settled(delivery.delivery_tag, exc)
            return
        self._state(channel).settled(delivery.delivery_tag)

    async def flush(self) -> None:
        """Send the acks still due and wait until they are written (before closing the connection)."""
        if self._scheduled:
            self._flush()
        while self._sender is not None and not self._sender.done():
            await asyncio.gather(self._sender, return_exceptions=True)

    def _state(self, channel: AbstractChannel) -> _Channel:
        for closed in [c for c in self._channels if c.is_closed]:
            del self._channels[closed]
        return self._channels.setdefault(channel, _Channel())

    def _flush(self) -> None:
        if not self._scheduled:
            return
        self._scheduled = False
        due, self._due = self._due, {}
        for channel, tags in due.items():
            self._frames += [(channel, tag, multiple) for tag, multiple in self._state(channel).frames(tags)]
        if self._frames and (self._sender is None or self._sender.done()):
            self._sender = asyncio.create_task(self._send(), name="agent-acks")

    async def _send(self) -> None:
        # one sender at a time, in order: an ack with multiple=True must not overtake an ack of
        # a tag below it, or the broker would see that tag acked twice and close the channel
        while self._frames:
            channel, tag, multiple = self._frames.pop(0)
            try:
                await channel.basic_ack(tag, multiple=multiple, wait=False)
            except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
                _not_settled(tag, exc)


def held(delivery: DeliveredMessage) -> bool:
    """Whether the channel ``delivery`` came on is still open (else the broker has it back)."""
    return not delivery.channel.is_closed


def _open_channel(delivery: DeliveredMessage) -> AbstractChannel | None:
    if not held(delivery):
        log.info("delivery %s not settled (its channel is closed); the broker redelivers it", delivery.delivery_tag)
        return None
    return delivery.channel


def _not_settled(tag: int | None, exc: BaseException) -> None:
    log.info("delivery %s not settled (%s: %s); the broker redelivers it", tag, type(exc).__name__, exc)
