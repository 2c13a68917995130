"""Waking a worker for a conversation from the web process (a replayed dead letter), without
Dramatiq's synchronous broker on the event loop.

Writes what ``RedisBroker.enqueue`` writes, as the edge's admission script does
(``gateway/store/dramatiq_queue.py``), so an unmodified Dramatiq worker consumes it. If it fails,
nothing is lost: the replayed conversation is already in ``active``, due now, and a worker's
sweeper adopts it within ``stall_grace_s``.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core.logs import conversation_label
from gateway.core.queue import ADVANCE, NAMESPACE, QUEUE
from gateway.store.dramatiq_queue import WakeQueue

__all__ = ["wake_conversation"]

log = logging.getLogger("ocsgw.admin")


async def wake_conversation(redis: aioredis.Redis, conversation: str, *, wake: WakeQueue | None = None) -> bool:
    """Queue ``advance_conversation(conversation)``; False (logged) when Redis refused."""
    wake = wake or WakeQueue.new(namespace=NAMESPACE, queue=QUEUE, actor=ADVANCE)
    try:
        await wake.enqueue(redis, conversation)
    except (RedisError, OSError) as exc:
        # The key may hold a user's id: its hash, as every log line (gateway/core/logs.py).
        log.warning("could not wake a worker for %s (%s); the sweeper will adopt it", conversation_label(conversation), exc)
        return False
    return True
