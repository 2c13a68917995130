"""The Dramatiq actors. Messages carry a conversation key and nothing else (dramatiq's best
practice: pass ids, make every actor safe to run twice); the state lives in Redis.

An actor does not run the turn: it hands the conversation to this process's turn runner and
returns, so a Dramatiq thread is busy for microseconds per message, not for a turn.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from workers.broker import ADVANCE, POLL_SESSION, QUEUE
from workers.runner import TurnRunner

__all__ = ["declare_actors"]

#: A hand-over fails only when the runner is stopping or full for long. It is not retried through
#: Dramatiq (a retry is a delayed message, and the gateway's broker has no delay queue): the
#: conversation stays in the sweeper's ``active`` set, so the sweeper of a live worker takes it.
_RETRY: dict[str, Any] = {"max_retries": 0}


def declare_actors(broker: RedisBroker, runner: Any) -> None:
    """Register the actors on ``broker``; ``runner()`` returns this process's running
    ``TurnRunner``."""

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name=ADVANCE, **_RETRY)  # type: ignore[misc]
    def advance_conversation(conv: str) -> None:
        current: TurnRunner = runner()
        current.offer(conv)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name=POLL_SESSION, **_RETRY)  # type: ignore[misc]
    def poll_session(conv: str) -> None:
        current: TurnRunner = runner()
        current.offer(conv, watch=True)
