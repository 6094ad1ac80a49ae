"""How many messages a queue holds, ready and unacknowledged, as RabbitMQ's management API counts them.

The AMQP declare-ok count cannot tell a message that is lost from one a consumer holds: it leaves out
unacknowledged messages, and a quorum queue answers it with 0 whenever its leader does not answer the
broker's stat query within 250 ms (RabbitMQ 3.10), as under load. The management API reads the
queue's own metrics, which it publishes every few seconds (``collect_statistics_interval``, 5 s by
default): a count a few seconds old, never a false 0 for a message held longer than that.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, unquote, urlsplit

import httpx

from control_plane.broker import redact

log = logging.getLogger("devart.queues")

MANAGEMENT_PORT = 15672
"""RabbitMQ's management listener, where the management URL is not set."""


class QueueCounts:
    """Messages per queue of one virtual host, from the management API at ``url``."""

    def __init__(self, url: str, vhost: str, *, timeout_s: float = 5.0) -> None:
        parts = urlsplit(url)
        self._auth = (unquote(parts.username or ""), unquote(parts.password or "")) if parts.username else None
        host = parts.netloc.rpartition("@")[2]
        self._base = f"{parts.scheme}://{host}{parts.path.rstrip('/')}/api/queues/{quote(vhost, safe='')}/"
        self._shown = redact(url)
        self._timeout_s = timeout_s
        self._answering = True

    @classmethod
    def for_broker(cls, management_url: str | None, amqp_url: str) -> QueueCounts:
        """The management API of the broker at ``amqp_url``: ``management_url``, or else that host on
        port 15672 with the AMQP URL's credentials. The virtual host is the AMQP URL's."""
        amqp = urlsplit(amqp_url)
        vhost = unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/"
        if management_url is None:
            credentials = amqp.netloc.rpartition("@")[0]
            userinfo = f"{credentials}@" if credentials else ""
            management_url = f"http://{userinfo}{amqp.hostname or '127.0.0.1'}:{MANAGEMENT_PORT}/"
        return cls(management_url, vhost)

    async def messages(self, queue: str) -> int | None:
        """Messages ready plus unacknowledged in ``queue``; None when the API cannot say: it does not
        answer or refuses us, knows no such queue (or virtual host: a wrong one must not read as
        empty queues), or has no statistics of the queue yet."""
        try:
            async with httpx.AsyncClient(auth=self._auth, timeout=self._timeout_s) as http:
                response = await http.get(self._base + quote(queue, safe=""),
                                          params={"columns": "messages_ready,messages_unacknowledged"})
            if response.status_code == 404:
                return None
            response.raise_for_status()
            counts = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            if self._answering:
                log.warning("the broker's management API at %s does not answer (%s): lost task messages are not "
                            "looked for until it does; their tasks end by their start timeout", self._shown, exc)
            self._answering = False
            return None
        if not self._answering:
            log.info("the broker's management API at %s answers again", self._shown)
        self._answering = True
        if not isinstance(counts, dict) or "messages_ready" not in counts or "messages_unacknowledged" not in counts:
            return None  # a queue that has published no statistics yet
        return int(counts["messages_ready"]) + int(counts["messages_unacknowledged"])
