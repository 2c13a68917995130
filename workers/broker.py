"""Broker setup, and the one way any process enqueues work (by actor name, ids only).

The web process does not import the actors: it only needs to put a message with the actor's
name on the queue, which keeps the edge free of worker code (and of the event loop the actors
need).
"""

from __future__ import annotations

from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO

__all__ = ["ADVANCE", "POLL_SESSION", "QUEUE", "enqueue", "make_broker"]

QUEUE = "ocsgw"
#: Moves one conversation forward by as many steps as it can take without waiting.
ADVANCE = "advance_conversation"
#: Looks for bot-initiated messages in one conversation's OCS session.
POLL_SESSION = "poll_session"
#: Dramatiq keys live beside ours but under their own prefix.
NAMESPACE = "ocsgw-dramatiq"


def make_broker(redis_url: str, *, with_asyncio: bool = True) -> RedisBroker:
    """A Redis broker; workers add the AsyncIO middleware that runs our async actors on one
    event loop per process."""
    broker = RedisBroker(url=redis_url, namespace=NAMESPACE, socket_timeout=5, socket_connect_timeout=5)
    if with_asyncio:
        broker.add_middleware(AsyncIO())
    return broker


def enqueue(broker: RedisBroker, actor_name: str, *args: str, delay_s: float | None = None) -> None:
    """Put ``actor_name(*args)`` on the queue, after ``delay_s`` if given."""
    message: Message[object] = Message(queue_name=QUEUE, actor_name=actor_name, args=args, kwargs={}, options={})
    delay_ms = max(int(delay_s * 1000), 1) if delay_s else None
    broker.enqueue(message, delay=delay_ms)
