"""Broker setup, and the one way a tool enqueues work (by actor name, ids only).

The web process does not use it: the edge writes its wake-up messages in the same Lua script
that stores the inbound (``gateway/store/inbox.py``), with the names in ``gateway/core/queue.py``.
"""

from __future__ import annotations

from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from gateway.core.queue import ADVANCE, NAMESPACE, POLL_SESSION, QUEUE

__all__ = ["ADVANCE", "NAMESPACE", "POLL_SESSION", "QUEUE", "enqueue", "make_broker"]


class _ImmediateBroker(RedisBroker):
    """Dramatiq's Redis broker without a delay queue. The gateway never delays a message (a
    waiting turn sleeps on the runner's timers), and a worker consumes every declared queue: an
    idle consumer of an always-empty delay queue would cost a Redis call a second for nothing."""

    def declare_queue(self, queue_name: str) -> None:
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues.add(queue_name)
            self.emit_after("declare_queue", queue_name)


def make_broker(redis_url: str) -> RedisBroker:
    """A Redis broker under the gateway's namespace (the actors are plain functions that hand
    work to the turn runner, so no asyncio middleware is needed)."""
    return _ImmediateBroker(url=redis_url, namespace=NAMESPACE, socket_timeout=5, socket_connect_timeout=5)


def enqueue(broker: RedisBroker, actor_name: str, *args: str) -> None:
    """Put ``actor_name(*args)`` on the queue."""
    message: Message[object] = Message(queue_name=QUEUE, actor_name=actor_name, args=args, kwargs={}, options={})
    broker.enqueue(message)
