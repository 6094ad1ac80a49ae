"""Confirmed publishes on aiormq's channel beneath a robust aio-pika one.

An agent publishes at least one event per task. aio-pika's ``Message`` and ``Exchange.publish``
add a frozen message object, its properties rebuilt from it and a wait for the socket write to
every publish; here the body, its headers and its properties go to aiormq's ``basic_publish`` as
they are, and only the broker's confirm is awaited. The robust channel still reconnects and
reopens; a publish while it does waits for the connection, as aio-pika's would.
"""

from __future__ import annotations

from aio_pika.abc import AbstractRobustChannel
from pamqp.commands import Basic

JSON = "application/json"
PERSISTENT = 2


class ConfirmedPublisher:
    """Persistent, mandatory publishes that return once the broker confirmed them.

    The channel must be opened with ``publisher_confirms=True, on_return_raises=True``: an
    unroutable message raises ``aiormq.exceptions.PublishError``, a nack ``DeliveryError``.
    """

    def __init__(self, channel: AbstractRobustChannel) -> None:
        self._channel = channel

    async def publish(
        self, exchange: str, routing_key: str, body: bytes, headers: dict[str, object], *,
        message_type: str | None = None, content_type: str | None = JSON,
    ) -> None:
        channel = await self._channel.get_underlay_channel()
        properties = Basic.Properties(
            content_type=content_type, delivery_mode=PERSISTENT, headers=headers, message_type=message_type
        )
        await channel.basic_publish(
            body, exchange=exchange, routing_key=routing_key, properties=properties, mandatory=True, wait=False
        )
