"""The turn ledger: every step of one turn, recorded before the next step starts.

OCS has no idempotency key, so a retried or resumed turn must never repeat a step that took
effect. The ledger is a Redis hash ``turn:{conv}`` for the inbox's head item; its ``state``
moves forward only::

    received → sending → sent(task_id) → delivering(reply, parts, delivered=n)

and a finished turn is deleted with its inbox item (``TurnLedger.finish``): there is no "done"
state to read. ``sending`` and ``sent`` may fall back to ``received`` (not accepted, the session
gone, or a send that never reached OCS), never forward past a step that was not recorded.

``sending`` is written *before* the message goes to OCS, with the number of user messages the
session will hold once it is in (``expect_count``); ``sent`` right after. A worker killed in
between, or a send whose answer never came back, leaves that mark, and the next step settles it
by counting the user messages in the session's history instead of sending again
(``workers/turns.py``). Likewise ``sending_part`` is written before each platform send.

A turn may cover several inbox items (a burst sent to OCS as one message): ``batch_raw`` names
the ones after the head, fixed when the turn begins, and the turn's end removes them all.

Writes are not made here: this module builds them as ``Op`` lists that the owner applies through
its lease (``gateway.store.lease``), so every write is fenced by the lease token.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis

from gateway.core.keys import Keys, as_text
from gateway.core.models import ConversationKey, Inbound, Outgoing, Reply
from gateway.store.conversations import ConversationRecord, parse_record
from gateway.store.lease import Op

__all__ = ["Snapshot", "Turn", "TurnLedger", "TurnState"]


class TurnState(StrEnum):
    RECEIVED = "received"
    SENDING = "sending"
    SENT = "sent"
    #: The answer (or the gateway's notice) is recorded with its rendered parts.
    DELIVERING = "delivering"


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
    #: How many user messages the OCS session holds once this turn's message is in it.
    expect_count: int = 0
    #: The history showed this turn's message arrived (a send settled without its task id).
    confirmed: bool = False
    #: Seconds after the send at which the last task poll still saw "processing".
    last_poll_s: float = 0.0
    #: The part being handed to the platform (written before the call): ``delivered`` when idle.
    sending_part: int = -1
    #: When delivery first failed in a row (platform or callback down): the retry budget's start.
    failing_since: float = 0.0
    #: What the message's voice notes said, once heard (JSON, ``workers/voice_notes.py``): a
    #: retried send reuses it, never transcribing again.
    voice: str = ""
    #: The inbox items after ``inbound_raw`` that this turn also covers (a burst sent to OCS as
    #: one message, ``workers/batches.py``), in inbox order. Fixed when the turn begins.
    batch_raw: tuple[str, ...] = ()
    #: Names of the user's files that could not be attached (the user is told, OCS only that
    #: there was one): a notice goes before the answer (``workers/closing.py``).
    unattached: tuple[str, ...] = ()
    #: ``inbound_raw`` parsed, beside the text it came from. ``replace`` hands it on to the new
    #: turn, so a turn's inbound is parsed once however often the turn changes (each parse is tens
    #: of microseconds); a changed ``inbound_raw`` is parsed again. Not stored, not compared.
    _parsed: tuple[str, Inbound] | None = field(default=None, compare=False, repr=False, kw_only=True)
    #: ``batch_raw`` parsed, handed on as ``_parsed`` is.
    _parsed_batch: tuple[tuple[str, ...], tuple[Inbound, ...]] | None = field(
        default=None, compare=False, repr=False, kw_only=True
    )

    def __post_init__(self) -> None:
        if self._parsed is None or self._parsed[0] != self.inbound_raw:
            object.__setattr__(self, "_parsed", (self.inbound_raw, Inbound.from_json(self.inbound_raw)))
        if self._parsed_batch is None or self._parsed_batch[0] != self.batch_raw:
            parsed = tuple(Inbound.from_json(raw) for raw in self.batch_raw)
            object.__setattr__(self, "_parsed_batch", (self.batch_raw, parsed))

    @property
    def inbound(self) -> Inbound:
        """The first message of the turn (the inbox's head when it began)."""
        parsed = self._parsed
        assert parsed is not None  # set by __post_init__
        return parsed[1]

    @property
    def inbounds(self) -> tuple[Inbound, ...]:
        """Every message the turn covers, the first one first."""
        batch = self._parsed_batch
        assert batch is not None  # set by __post_init__
        return (self.inbound, *batch[1])

    @property
    def last(self) -> Inbound:
        """The newest message the turn covers: the answer replies to it."""
        batch = self._parsed_batch
        assert batch is not None
        return batch[1][-1] if batch[1] else self.inbound

    @property
    def items(self) -> tuple[str, ...]:
        """The inbox items the turn covers, as stored."""
        return (self.inbound_raw, *self.batch_raw)

    def ocs_ids(self) -> dict[str, str]:
        return {"session_id": self.session_id, "task_id": self.task_id}


def _encode(fields: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for name, value in fields.items():
        if name == "reply":
            text = json.dumps(value.to_dict()) if value else ""
        elif name == "parts":
            text = json.dumps([p.to_dict() for p in value])
        elif name in ("platform_ids", "batch_raw", "unattached"):
            text = json.dumps(list(value))
        elif isinstance(value, bool):
            text = "1" if value else ""
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = str(value)
        out.extend((name, text))
    return out


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one round trip tells the owner about its conversation."""

    turn: Turn | None
    record: ConversationRecord
    #: The inbox's first items (as many as the load asked for), the head first.
    queue: tuple[str, ...]

    @property
    def head(self) -> str | None:
        """The inbox's first item: the next turn's first message."""
        return self.queue[0] if self.queue else None


class TurnLedger:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def load(self, conv: ConversationKey, *, depth: int = 1) -> Snapshot:
        """The turn, the conversation record and the inbox's first ``depth`` items, in one round
        trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.turn(conv))
            pipe.hgetall(self._keys.conversation(conv))
            pipe.lrange(self._keys.inbox(conv), 0, depth - 1)
            turn_raw, conv_raw, queue = await pipe.execute()
        return Snapshot(_parse_turn(turn_raw), parse_record(conv_raw), tuple(as_text(item) for item in queue))

    def begin(
        self, conv: ConversationKey, inbound_raw: str, *, batch: Sequence[str] = (), now: float
    ) -> tuple[Turn, list[Op]]:
        """A turn for the inbox's head ``inbound_raw`` and the items after it in ``batch``."""
        turn = Turn(id=uuid.uuid4().hex, inbound_raw=inbound_raw, next_at=now, batch_raw=tuple(batch))
        fields: dict[str, Any] = {"id": turn.id, "inbound_raw": inbound_raw, "state": turn.state, "next_at": now}
        if batch:
            fields["batch_raw"] = turn.batch_raw
        # The head is the authority on the waiting index (gateway/store/waiting.py): overwrite
        # whatever the appends or an earlier turn left there.
        waiting_since = turn.inbound.received_at if turn.inbound.received_at > 0 else now
        return turn, [
            Op("DEL", self._keys.turn(conv)),
            Op("HSET", self._keys.turn(conv), tuple(_encode(fields))),
            Op("ZADD", self._keys.waiting, (repr(float(waiting_since)), str(conv))),
        ]

    def update(self, conv: ConversationKey, turn: Turn, **changes: Any) -> tuple[Turn, list[Op]]:
        """The turn with ``changes`` and the write that records them."""
        return replace(turn, **changes), [Op("HSET", self._keys.turn(conv), tuple(_encode(changes)))]

    def finish(self, conv: ConversationKey, turn: Turn) -> list[Op]:
        """Drop the turn and its inbox items together, so the next item becomes the head.

        The conversation also leaves the waiting index: the next ``begin`` puts it back with the
        next head's time. A crash in between leaves it out until the sweeper adopts the
        conversation (within ``stall_grace_s``) and begins; no write here could know the next
        head's time without reading its body."""
        inbox = self._keys.inbox(conv)
        return [
            *(Op("LREM", inbox, (1, item)) for item in turn.items),
            Op("DEL", self._keys.turn(conv)),
            Op("ZREM", self._keys.waiting, (str(conv),)),
        ]


def _parse_turn(data: dict[Any, Any]) -> Turn | None:
    raw = {as_text(k): as_text(v) for k, v in data.items()}
    if not raw.get("id") or "inbound_raw" not in raw:
        return None
    return Turn(
        id=raw["id"],
        inbound_raw=raw["inbound_raw"],
        state=TurnState(raw.get("state") or TurnState.RECEIVED),
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
        expect_count=int(raw.get("expect_count") or 0),
        confirmed=raw.get("confirmed") == "1",
        last_poll_s=float(raw.get("last_poll_s") or 0),
        sending_part=int(raw.get("sending_part") or -1),
        failing_since=float(raw.get("failing_since") or 0),
        voice=raw.get("voice", ""),
        batch_raw=tuple(json.loads(raw.get("batch_raw") or "[]")),
        unattached=tuple(json.loads(raw.get("unattached") or "[]")),
    )
