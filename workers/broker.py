"""Broker setup, and the one way a tool enqueues work (by actor name, ids only).

The web process does not use it: the edge writes its wake-up messages in the same Lua script
that stores the inbound (``gateway/store/dramatiq_queue.py``), with the names in
``gateway/core/queue.py``.

**No retries, so no delay queue.** A wake-up carries no state: the conversation it names is in
the sweeper's ``active`` set from its admission on, so a hand-over that fails (the runner is
stopping, or full for long) is adopted by a live worker's sweeper within ``stall_grace_s``.
Dramatiq's retry of it would be a second way back, no sooner (its first backoff is 15 s), through
the delay queue: a message held in the memory of whichever worker fetched it, and a consumer that
polls Redis once a second even while nothing is ever delayed. The actors therefore set
``max_retries=0`` (what Dramatiq advises over removing its Retries middleware: a failed message
is then dead-lettered by Dramatiq, not taken for done), and ``consume_no_delay_queue`` keeps the
worker from polling the delay queues their declaration adds.
"""

from __future__ import annotations

from dramatiq import Broker, Message
from dramatiq.brokers.redis import RedisBroker

from gateway.core.config import GatewayConfig
from gateway.core.queue import ADVANCE, NAMESPACE, POLL_SESSION, QUEUE
from gateway.store.connect import sync_redis

__all__ = ["ADVANCE", "NAMESPACE", "POLL_SESSION", "QUEUE", "consume_no_delay_queue", "enqueue", "make_broker"]


def make_broker(config: GatewayConfig, redis_url: str | None) -> RedisBroker:
    """Dramatiq's Redis broker, with its default middleware, under the gateway's namespace, on
    the configured Redis (a Sentinel master followed across failovers, gateway/store/connect.py)."""
    client = sync_redis(config, redis_url, socket_timeout=5, socket_connect_timeout=5)
    return RedisBroker(client=client, namespace=NAMESPACE)  # type: ignore[no-untyped-call]  # dramatiq is untyped


def consume_no_delay_queue(broker: Broker) -> None:
    """Forget the delay queues ``declare_queue`` declared beside the queues, before a ``Worker``
    starts: it reads ``broker.delay_queues`` (Dramatiq's public set of them) once, when it starts,
    and would otherwise run a consumer for each that polls Redis about once a second for nothing.
    Call it after the actors are declared.

    Raises:
        ValueError: an actor may be retried: its retries would wait in a delay queue nobody reads.
    """
    retried = sorted(name for name, actor in broker.actors.items() if actor.options.get("max_retries") != 0)
    if retried:
        raise ValueError(f"actors {retried} may be retried, but this broker's workers consume no delay queue")
    broker.delay_queues.clear()


def enqueue(broker: RedisBroker, actor_name: str, *args: str) -> None:
    """Put ``actor_name(*args)`` on the queue."""
    message: Message[object] = Message(queue_name=QUEUE, actor_name=actor_name, args=args, kwargs={}, options={})
    broker.enqueue(message)
