"""The dead-letter store: turns that exhausted their retries, kept for an operator to list,
inspect, replay or drop (``ocs-gateway dlq …``). Each letter holds the raw inbound, the last
error, the OCS ids and the ledger as it was."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.keys import Keys, as_text
from gateway.models import ConversationKey, Inbound

__all__ = ["DeadLetter", "DeadLetterStore"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    conversation: str
    inbound: str
    error: str
    ocs: dict[str, str]
    ledger: dict[str, Any]
    parked_at: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


class DeadLetterStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def park(
        self, conv: ConversationKey, inbound_raw: str, *, error: str, ocs: dict[str, str], ledger: dict[str, Any]
    ) -> DeadLetter:
        letter = DeadLetter(uuid.uuid4().hex[:12], str(conv), inbound_raw, error, ocs, ledger, time.time())
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._keys.dead_letter(letter.id), letter.to_json())
            pipe.zadd(self._keys.dlq, {letter.id: letter.parked_at})
            await pipe.execute()
        return letter

    async def list(self, *, limit: int = 100) -> list[DeadLetter]:
        ids = await self._redis.zrange(self._keys.dlq, 0, limit - 1)
        letters = [await self.get(as_text(i)) for i in ids]
        return [letter for letter in letters if letter is not None]

    async def get(self, letter_id: str) -> DeadLetter | None:
        raw = await self._redis.get(self._keys.dead_letter(letter_id))
        return DeadLetter(**json.loads(raw)) if raw else None

    async def drop(self, letter_id: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.dead_letter(letter_id))
            pipe.zrem(self._keys.dlq, letter_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def replay(self, letter_id: str) -> ConversationKey | None:
        """Put the inbound back at the end of its conversation's inbox and forget the letter.

        The caller enqueues the conversation; the turn starts afresh (a new OCS message).
        """
        letter = await self.get(letter_id)
        if letter is None:
            return None
        conv = Inbound.from_json(letter.inbound).key
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self._keys.inbox(conv), letter.inbound)
            pipe.zadd(self._keys.active, {str(conv): time.time()})
            pipe.delete(self._keys.dead_letter(letter_id))
            pipe.zrem(self._keys.dlq, letter_id)
            await pipe.execute()
        return conv
