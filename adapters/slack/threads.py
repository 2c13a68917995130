"""Threads the bot takes part in, so that plain replies there reach it without a mention.

Slack sends ``message.channels`` for every message in a channel the bot is in; answering all of
them would make the bot a nuisance. Bolt apps answer an ``app_mention`` and then the thread it
started. We remember a thread when the bot is mentioned in it or posts in it, for
``THREAD_TTL_S`` after the last time (one Redis key per thread, so each expires on its own).
An assistant thread (a thread in the bot's DM) is joined by its first user message, which is how
that message is known to be the first (``assistant.py``: it names the thread).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from adapters.slack.keys import SlackKeys
from gateway.core.keys import Keys

__all__ = ["THREAD_TTL_S", "ThreadTracker"]

#: A thread the bot has been quiet in for this long needs a new mention.
THREAD_TTL_S = 30 * 24 * 3600


class ThreadTracker:
    """``slack:thread:{channel}:{team}:{slack channel}:{thread_ts}`` keys with a TTL."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, channel: str) -> None:
        self._redis = redis
        self._keys = SlackKeys.of(keys)
        self._channel = channel

    def _key(self, team: str, slack_channel: str, thread_ts: str) -> str:
        return self._keys.thread(self._channel, team, slack_channel, thread_ts)

    async def join(self, team: str, slack_channel: str, thread_ts: str) -> None:
        await self._redis.set(self._key(team, slack_channel, thread_ts), "1", ex=THREAD_TTL_S)

    async def join_first(self, team: str, slack_channel: str, thread_ts: str) -> bool:
        """Join a thread; True only for the first caller (an assistant thread's first message)."""
        return bool(await self._redis.set(self._key(team, slack_channel, thread_ts), "1", ex=THREAD_TTL_S, nx=True))

    async def is_joined(self, team: str, slack_channel: str, thread_ts: str) -> bool:
        return bool(await self._redis.exists(self._key(team, slack_channel, thread_ts)))
