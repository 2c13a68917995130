"""Remembering which bot messages were already delivered, so the watch (which sees every
message again) never repeats a turn's answer (docs/OCS.md §6.6).

Two marks per delivered answer: the exact ``(created_at, content)`` pair, and the content alone
for ten minutes, because an early-exit reply carries a different ``created_at`` in the task
poll than in the history (docs/OCS.md §4.3).
"""

from __future__ import annotations

import hashlib
import time
from typing import Protocol

import redis.asyncio as aioredis

from gateway.store.lease import Op

__all__ = ["BotMessage", "delivered_ops", "was_delivered"]

CONTENT_WINDOW_S = 600
KEEP_S = 7 * 24 * 3600


class BotMessage(Protocol):
    """What a fingerprint is made of (``gateway.ocs.messages.OCSMessage`` has it)."""

    @property
    def created_at(self) -> str | None: ...
    @property
    def content(self) -> str: ...


def _exact(message: BotMessage) -> str:
    # Spelled as when messages were dicts ("None" for a missing time), so marks already
    # stored keep matching.
    return "x:" + hashlib.sha1(f"{message.created_at}|{message.content}".encode()).hexdigest()


def _content(message: BotMessage) -> str:
    return "c:" + hashlib.sha1(message.content.encode()).hexdigest()


def delivered_ops(key: str, message: BotMessage, *, now: float) -> list[Op]:
    """Mark ``message`` delivered: fenced writes for the conversation's owner (both marks,
    and the pruning of marks older than ``KEEP_S``)."""
    return [
        Op("ZADD", key, (now, _exact(message), now, _content(message))),
        Op("ZREMRANGEBYSCORE", key, (0, now - KEEP_S)),
        Op("EXPIRE", key, (KEEP_S,)),
    ]


async def was_delivered(redis: aioredis.Redis, key: str, message: BotMessage) -> bool:
    exact, content = await redis.zmscore(key, [_exact(message), _content(message)])
    return exact is not None or (content is not None and content > time.time() - CONTENT_WINDOW_S)
