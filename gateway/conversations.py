"""What the gateway remembers about a conversation: its OCS session, where replies go, whether
the user is gone, and the cursor of the session poll. One Redis hash, ``conv:{conv}``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.keys import Keys, as_text
from gateway.models import ConversationKey, Route
from gateway.ocs_client import OCSSession

__all__ = ["ConversationRecord", "ConversationStore"]

_SESSION_FIELDS = ("session_id", "session_token", "chatbot_id", "started_at")


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    session: OCSSession | None
    route: Route
    gone: bool
    #: ``created_at`` of the last OCS message the session poll handled (exclusive cursor, §6.3).
    cursor: str | None
    last_active: float
    last_polled: float


class ConversationStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def load(self, conv: ConversationKey) -> ConversationRecord:
        raw = {as_text(k): as_text(v) for k, v in (await self._redis.hgetall(self._keys.conversation(conv))).items()}
        session = None
        if all(raw.get(f) for f in _SESSION_FIELDS):
            session = OCSSession(raw["session_id"], raw["session_token"], raw["chatbot_id"], float(raw["started_at"]))
        return ConversationRecord(
            session=session,
            route=json.loads(raw["route"]) if raw.get("route") else {},
            gone=raw.get("gone") == "1",
            cursor=raw.get("cursor") or None,
            last_active=float(raw.get("last_active") or 0),
            last_polled=float(raw.get("last_polled") or 0),
        )

    async def save_session(self, conv: ConversationKey, session: OCSSession) -> None:
        await self._redis.hset(
            self._keys.conversation(conv),
            mapping={
                "session_id": session.session_id,
                "session_token": session.session_token,
                "chatbot_id": session.chatbot_id,
                "started_at": repr(session.started_at),
                "cursor": "",
            },
        )

    async def forget_session(self, conv: ConversationKey) -> None:
        await self._redis.hdel(self._keys.conversation(conv), *_SESSION_FIELDS, "cursor")
        await self._redis.delete(self._keys.fingerprints(conv))
        await self._redis.zrem(self._keys.botpoll, str(conv))

    async def touch(self, conv: ConversationKey, route: Route) -> None:
        """Remember where replies go and that the user was active now."""
        await self._redis.hset(
            self._keys.conversation(conv), mapping={"route": json.dumps(dict(route)), "last_active": repr(time.time())}
        )

    async def set_gone(self, conv: ConversationKey, gone: bool) -> None:
        if gone:
            await self._redis.hset(self._keys.conversation(conv), "gone", "1")
        else:
            await self._redis.hdel(self._keys.conversation(conv), "gone")

    async def set_cursor(self, conv: ConversationKey, cursor: str) -> None:
        await self._redis.hset(self._keys.conversation(conv), mapping={"cursor": cursor, "last_polled": repr(time.time())})

    async def mark_polled(self, conv: ConversationKey) -> None:
        await self._redis.hset(self._keys.conversation(conv), "last_polled", repr(time.time()))
