"""The turn ledger: every step of one turn, recorded before the next step starts.

OCS has no idempotency key, so a retried or resumed job must never repeat a step that took
effect. The ledger is a Redis hash ``turn:{conv}`` for the inbox's head item; its ``state``
moves forward only::

    received → sending → sent(task_id) → replied(reply) → delivering(parts, delivered=n) → done

``sending`` is written *before* the message goes to OCS and ``sent`` right after, so a worker
killed in between leaves a mark that the next worker resolves by reading the session history
instead of sending again (``workers/turns.py``).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis

from gateway.keys import Keys, as_text
from gateway.models import ConversationKey, Inbound, Outgoing, Reply

__all__ = ["Turn", "TurnLedger", "TurnState"]


class TurnState(StrEnum):
    RECEIVED = "received"
    SENDING = "sending"
    SENT = "sent"
    REPLIED = "replied"
    DELIVERING = "delivering"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Turn:
    id: str
    inbound_raw: str
    state: TurnState = TurnState.RECEIVED
    session_id: str = ""
    task_id: str = ""
    sending_at: float = 0.0
    sent_at: float = 0.0
    reply: Reply | None = None
    parts: tuple[Outgoing, ...] = ()
    delivered: int = 0
    platform_ids: tuple[str, ...] = ()
    attempts: int = 0
    polls: int = 0
    last_error: str = ""
    next_at: float = 0.0
    working_at: float = 0.0
    #: Set when this turn ended in the dead-letter store (its notice is still delivered).
    dead_letter: str = ""
    inbound: Inbound = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inbound", Inbound.from_json(self.inbound_raw))

    def ocs_ids(self) -> dict[str, str]:
        return {"session_id": self.session_id, "task_id": self.task_id}


def _encode(turn: Turn, fields: dict[str, Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for name, value in fields.items():
        if name == "reply":
            out[name] = json.dumps(value.to_dict()) if value else ""
        elif name == "parts":
            out[name] = json.dumps([p.to_dict() for p in value])
        elif name == "platform_ids":
            out[name] = json.dumps(list(value))
        elif isinstance(value, float):
            out[name] = repr(value)
        else:
            out[name] = str(value)
    return out


class TurnLedger:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def load(self, conv: ConversationKey) -> Turn | None:
        raw = {as_text(k): as_text(v) for k, v in (await self._redis.hgetall(self._keys.turn(conv))).items()}
        if not raw.get("id"):
            return None
        return Turn(
            id=raw["id"],
            inbound_raw=raw["inbound_raw"],
            state=TurnState(raw.get("state", TurnState.RECEIVED)),
            session_id=raw.get("session_id", ""),
            task_id=raw.get("task_id", ""),
            sending_at=float(raw.get("sending_at") or 0),
            sent_at=float(raw.get("sent_at") or 0),
            reply=Reply.from_dict(json.loads(raw["reply"])) if raw.get("reply") else None,
            parts=tuple(Outgoing.from_dict(p) for p in json.loads(raw.get("parts") or "[]")),
            delivered=int(raw.get("delivered") or 0),
            platform_ids=tuple(json.loads(raw.get("platform_ids") or "[]")),
            attempts=int(raw.get("attempts") or 0),
            polls=int(raw.get("polls") or 0),
            last_error=raw.get("last_error", ""),
            next_at=float(raw.get("next_at") or 0),
            working_at=float(raw.get("working_at") or 0),
            dead_letter=raw.get("dead_letter", ""),
        )

    async def begin(self, conv: ConversationKey, inbound_raw: str) -> Turn:
        turn = Turn(id=uuid.uuid4().hex, inbound_raw=inbound_raw)
        await self._redis.hset(
            self._keys.turn(conv),
            mapping=_encode(turn, {"id": turn.id, "inbound_raw": inbound_raw, "state": turn.state, "next_at": time.time()}),
        )
        return turn

    async def update(self, conv: ConversationKey, turn: Turn, **changes: Any) -> Turn:
        """Record ``changes`` (written before the caller goes on) and return the new turn."""
        new = replace(turn, **changes)
        await self._redis.hset(self._keys.turn(conv), mapping=_encode(new, changes))
        return new

    async def finish(self, conv: ConversationKey, turn: Turn) -> None:
        """Drop the turn and its inbox item together, so the next item becomes the head."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self._keys.inbox(conv), 1, turn.inbound_raw)
            pipe.delete(self._keys.turn(conv))
            await pipe.execute()
