"""The Dramatiq actors. Messages carry a conversation key and nothing else (dramatiq's best
practice: pass ids, make every actor safe to run twice); the state lives in Redis.

An actor does not run the turn: it hands the conversation to this process's turn runner and
returns, so a Dramatiq thread is busy for microseconds per message, not for a turn. A hand-over
the runner refuses (full for long, or stopping) is logged and the message done: the conversation
waits in the sweeper's ``active`` set, and a live worker's sweeper adopts it (why not Dramatiq's
retries: ``workers/broker.py``).
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from workers.broker import ADVANCE, POLL_SESSION, QUEUE
from workers.lifecycle import RunnerMiddleware

__all__ = ["declare_actors"]


def declare_actors(broker: RedisBroker, life: RunnerMiddleware) -> None:
    """Register the actors on ``broker``; they hand over to the runner ``life`` runs."""

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name=ADVANCE, max_retries=0)
    def advance_conversation(conv: str) -> None:
        life.hand_over(conv)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name=POLL_SESSION, max_retries=0)
    def poll_session(conv: str) -> None:
        life.hand_over(conv, watch=True)
