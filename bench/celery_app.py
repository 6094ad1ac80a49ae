"""The Celery peer of the dispatch benchmark: one no-op task, configured like devart's delivery.

The ``celery`` command needs a module-level app, so this module reads its broker and queue from
the environment the benchmark sets (``BENCH_CELERY_BROKER``, ``BENCH_CELERY_QUEUE``) when the
worker subprocess imports it. Settings chosen for parity with devart's guarantees, not speed:

- a durable quorum queue (devart's pool queues are quorum queues);
- publisher confirms on submit (devart's 201 means the task is durable);
- ``acks_late`` with prefetch = concurrency (devart acks after the result is confirmed and takes
  as many deliveries as it has slots);
- results through the ``rpc://`` backend on the same broker, so completion is observable without
  another service (the fast peer), or, for the durable peer (``BENCH_CELERY_BACKEND`` set to a
  ``db+postgresql://`` URL), stored in Postgres through SQLAlchemy with ``task_track_started``, so
  the start and the result of every task are rows, as devart's are.
"""

from __future__ import annotations

import os
import time

import kombu.pools
from celery import Celery

app = Celery("bench")
app.conf.update(
    task_default_queue_type="quorum",
    worker_detect_quorum_queues=True,
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_enable_remote_control=False,
    worker_hijack_root_logger=False,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)


def configure(broker_url: str, queue: str, backend: str = "rpc://") -> None:
    """Point the app at a broker (kombu URL, vhost ``//``), a queue and a result backend (``rpc://``
    or a durable ``db+postgresql://...``); before the client thread's first use."""
    durable = backend.startswith("db+")
    app.conf.update(broker_url=broker_url, task_default_queue=queue, task_default_exchange=queue,
                    task_default_routing_key=queue, result_backend=backend, task_track_started=durable,
                    task_default_delivery_mode="persistent")


# The worker subprocess learns its names here; the benchmark's client calls configure() itself.
configure(os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
          os.environ.get("BENCH_CELERY_QUEUE", "bench.celery"), os.environ.get("BENCH_CELERY_BACKEND", "rpc://"))


@app.task(name="bench.noop")
def noop() -> float:
    """Do nothing; return when it started (wall clock) so the client can compute submit->start."""
    return time.time()


def shutdown() -> None:
    """Close the client's connections: the rpc result consumer's (or the database engine's) and the
    producer pool's."""
    consumer = getattr(app.backend, "result_consumer", None)
    if getattr(consumer, "_consumer", None) is not None:  # started by the first result.get()
        consumer.stop()
    session_manager = getattr(app.backend, "session_manager", None)
    if session_manager is not None:
        for engine in session_manager._engines.values():
            engine.dispose()
    app.pool.force_close_all()
    app.close()
    # The next configure() may name another broker queue: kombu's shared producer and connection
    # pools and the app's routing tables are built anew from it.
    kombu.pools.reset()
    app.__dict__.pop("amqp", None)
