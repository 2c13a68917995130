"""Remembering which bot messages were already delivered, so the watch (which sees every
message again) never repeats a turn's answer (CONTRACT §6.6).

Two marks per delivered answer: the exact ``(created_at, content)`` pair, and the content alone
for ten minutes, because an early-exit reply carries a different ``created_at`` in the task
poll than in the history (§4.3).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Mapping

import redis.asyncio as aioredis

from gateway.store.lease import Op

__all__ = ["delivered_ops", "was_delivered"]

CONTENT_WINDOW_S = 600
KEEP_S = 7 * 24 * 3600


def _exact(message: Mapping[str, Any]) -> str:
    return "x:" + hashlib.sha1(f"{message.get('created_at')}|{message.get('content')}".encode()).hexdigest()


def _content(message: Mapping[str, Any]) -> str:
    return "c:" + hashlib.sha1(str(message.get("content")).encode()).hexdigest()


def delivered_ops(key: str, message: Mapping[str, Any], *, now: float) -> list[Op]:
    """Mark ``message`` delivered: fenced writes for the conversation's owner (both marks,
    and the pruning of marks older than ``KEEP_S``)."""
    return [
        Op("ZADD", key, (now, _exact(message), now, _content(message))),
        Op("ZREMRANGEBYSCORE", key, (0, now - KEEP_S)),
        Op("EXPIRE", key, (KEEP_S,)),
    ]


async def was_delivered(redis: aioredis.Redis, key: str, message: Mapping[str, Any]) -> bool:
    exact, content = await redis.zmscore(key, [_exact(message), _content(message)])
    return exact is not None or (content is not None and content > time.time() - CONTENT_WINDOW_S)
