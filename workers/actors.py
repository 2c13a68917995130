"""The Dramatiq actors. Messages carry a conversation key and nothing else (dramatiq's best
practice: pass ids, make every actor safe to run twice); the state lives in the ledger."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from gateway.models import ConversationKey
from workers.botpoll import poll_for_bot_messages
from workers.broker import ADVANCE, POLL_SESSION, QUEUE
from workers.runtime import WorkerRuntime

__all__ = ["declare_actors"]

#: Unexpected errors (a Redis blip, a bug) are retried by Dramatiq; expected ones are handled in
#: the turn engine, which records them in the ledger.
_RETRY: dict[str, Any] = {"max_retries": 12, "min_backoff": 1_000, "max_backoff": 60_000}


def declare_actors(broker: RedisBroker, runtime: WorkerRuntime) -> None:
    """Register the actors on ``broker``, bound to this process's runtime."""

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name=ADVANCE, **_RETRY)  # type: ignore[call-overload, misc]
    async def advance_conversation(conv: str) -> None:
        engine = await runtime.engine()
        await engine.advance(ConversationKey.parse(conv))

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name=POLL_SESSION, **_RETRY)  # type: ignore[call-overload, misc]
    async def poll_session(conv: str) -> None:
        key = ConversationKey.parse(conv)
        if await poll_for_bot_messages(await runtime.services(), runtime.config.worker, key):
            runtime.schedule(key, 0.0)
