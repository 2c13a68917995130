"""The dead-letter store: turns that exhausted their retries, kept for an operator to list,
count, inspect, replay or drop (``ocs-gateway dlq …``).

Each letter holds the raw inbound, the last error, the OCS ids, the ledger as it was, the
``stage`` it failed at and, when the answer existed, the ``reply`` and its rendered ``parts``,
so replaying a failed *delivery* re-delivers that answer without asking OCS again.

Letters live ``retention_days`` (config ``dead_letter_retention_days``): the letter key carries
the TTL and the ``dlq`` index is pruned of older ids whenever a letter is parked or listed.
"""

from __future__ import annotations

import builtins
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis

from gateway.core.keys import Keys, as_text
from gateway.core.models import ConversationKey, Inbound, InboundKind, Outgoing, Reply
from gateway.store.lua import LuaScript
from gateway.store.waiting import NOTE_WAITING_LUA

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "DeadLetter",
    "DeadLetterPage",
    "DeadLetterStage",
    "DeadLetterStore",
    "ReplayedParts",
    "since_from_text",
]


class DeadLetterStage(StrEnum):
    """Where a parked turn failed; the value is what the letter stores and the CLI and console show."""

    #: Never got an answer: starting the session, sending or polling failed.
    OCS = "ocs"
    #: The answer exists; sending it to the platform failed.
    DELIVERY = "delivery"
    #: The conversation's channel is no longer configured.
    CONFIG = "config"
    #: The inbox item could not be read as a message.
    UNREADABLE = "unreadable"
    #: Parked without a stage (letters from before stages were kept), or with one this version
    #: does not know (a newer version's): such a letter still lists, counts and replays (its
    #: inbound, afresh), and its record in Redis keeps the stage it was written with.
    UNKNOWN = "unknown"

    @classmethod
    def read(cls, raw: object) -> DeadLetterStage:
        """The stage a stored letter names; ``UNKNOWN`` for none or one not listed here."""
        if isinstance(raw, str):
            try:
                return cls(raw)
            except ValueError:
                pass
        return cls.UNKNOWN


#: How long letters are kept unless configured otherwise.
DEFAULT_RETENTION_DAYS = 14.0
_DAY_S = 24 * 3600
#: Index entries read per round trip while paging.
_BATCH = 200


# KEYS: the letter, the dlq index, the conversation's inbox, active, waiting. ARGV: letter id,
# inbox item, conversation, the item's received_at (0: unknown), then the rest of its burst. Whoever deletes the letter
# queues it: two replays at once (a double click, two operators, two web replicas) queue it
# once, and the other is told it is gone.
_REPLAY = LuaScript(NOTE_WAITING_LUA + """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
local length = redis.call('RPUSH', KEYS[3], ARGV[2], unpack(ARGV, 5))
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[4], now, ARGV[3])
-- The waiting index keeps the first item's time: the inbox's length once it was in.
note_waiting(KEYS[5], ARGV[3], length - (#ARGV - 4), ARGV[4], now)
return 1
""")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    conversation: str
    inbound: str
    error: str
    ocs: dict[str, str]
    ledger: dict[str, Any]
    parked_at: float
    stage: DeadLetterStage = DeadLetterStage.UNKNOWN
    reply: Reply | None = None
    parts: tuple[Outgoing, ...] = ()
    #: The messages after ``inbound`` that the failed turn covered (a burst sent as one): an OCS
    #: failure's replay puts them all back, in order.
    batch: tuple[str, ...] = ()

    @property
    def channel(self) -> str:
        return self.conversation.partition("/")[0]

    def to_json(self) -> str:
        data = {
            "id": self.id, "conversation": self.conversation, "inbound": self.inbound, "error": self.error,
            "ocs": self.ocs, "ledger": self.ledger, "parked_at": self.parked_at, "stage": self.stage,
            "reply": self.reply.to_dict() if self.reply is not None else None,
            "parts": [part.to_dict() for part in self.parts],
        }
        if self.batch:
            data["batch"] = list(self.batch)
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> DeadLetter:
        data = json.loads(raw)
        reply = data.get("reply")
        return cls(
            id=data["id"], conversation=data["conversation"], inbound=data["inbound"], error=data["error"],
            ocs=data.get("ocs") or {}, ledger=data.get("ledger") or {}, parked_at=float(data["parked_at"]),
            stage=DeadLetterStage.read(data.get("stage")),
            reply=Reply.from_dict(reply) if reply else None,
            parts=tuple(Outgoing.from_dict(part) for part in data.get("parts") or ()),
            batch=tuple(str(item) for item in data.get("batch") or ()),
        )


class DeadLetterPage(list[DeadLetter]):
    """One page of letters, newest first; ``next_cursor`` continues after the last one (None:
    this was the last page). A list, so a caller that wants only the letters can use it as one."""

    def __init__(self, letters: Sequence[DeadLetter] = (), next_cursor: str | None = None) -> None:
        super().__init__(letters)
        self.next_cursor = next_cursor


@dataclass(frozen=True, slots=True)
class _Position:
    """Where a walk down the index (newest first) stands: just after ``letter_id`` at ``score``
    (the index score, parked_at); ``letter_id`` None is the top."""

    score: float = math.inf
    letter_id: str | None = None

    def cursor(self) -> str:
        # repr round-trips a float exactly, so the cursor names the very score Redis holds.
        return f"{self.score!r}:{self.letter_id}"

    @classmethod
    def parse(cls, cursor: str) -> _Position:
        score, _, letter_id = cursor.partition(":")
        try:
            position = cls(float(score), letter_id or None)
        except ValueError:
            position = cls(math.nan)
        if position.letter_id is None or not math.isfinite(position.score):
            raise ValueError(f"not a dead-letter cursor: {cursor!r}")
        return position


class DeadLetterStore:
    """Parameters:
    redis, keys: where letters live.
    retention_days: how long a letter is kept (``dead_letter_retention_days``).
    """

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, retention_days: float = DEFAULT_RETENTION_DAYS) -> None:
        if retention_days <= 0:
            raise ValueError("retention_days must be positive")
        self._redis = redis
        self._keys = keys
        self._retention_s = retention_days * _DAY_S

    async def park(
        self,
        conv: ConversationKey,
        inbound_raw: str,
        *,
        error: str,
        ocs: dict[str, str],
        ledger: dict[str, Any],
        stage: DeadLetterStage = DeadLetterStage.UNKNOWN,
        reply: Reply | None = None,
        parts: Sequence[Outgoing] = (),
        batch: Sequence[str] = (),
    ) -> DeadLetter:
        """Keep a failed turn, with the ``stage`` it failed at; a delivery failure passes the ``reply`` (and its
        rendered ``parts``) so a replay needs no OCS call."""
        letter = DeadLetter(
            uuid.uuid4().hex[:12], str(conv), inbound_raw, error, ocs, ledger, time.time(),
            stage=stage, reply=reply, parts=tuple(parts), batch=tuple(batch),
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._keys.dead_letter(letter.id), letter.to_json(), px=int(self._retention_s * 1000))
            pipe.zadd(self._keys.dlq, {letter.id: letter.parked_at})
            pipe.zremrangebyscore(self._keys.dlq, "-inf", f"({letter.parked_at - self._retention_s!r}")
            await pipe.execute()
        return letter

    async def list(
        self, *, limit: int = 50, cursor: str | None = None, channel: str | None = None, since: float | None = None
    ) -> DeadLetterPage:
        """One page of letters, **newest first**, optionally of one ``channel`` and parked at or
        after ``since`` (Unix seconds). Pass the page's ``next_cursor`` back for the next page;
        every letter appears on exactly one page.

        Raises:
            ValueError: ``limit`` below 1 or a cursor this store did not make.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        start = _Position.parse(cursor) if cursor else _Position()
        letters: list[tuple[DeadLetter, _Position]] = []
        async for letter, position in self._walk(start, since):
            if channel is None or letter.channel == channel:
                letters.append((letter, position))
                if len(letters) > limit:
                    break
        more = len(letters) > limit
        page = [letter for letter, _ in letters[:limit]]
        return DeadLetterPage(page, letters[limit - 1][1].cursor() if more else None)

    async def count(self, *, since: float | None = None) -> dict[tuple[str, DeadLetterStage], int]:
        """How many letters there are per ``(channel, stage)``."""
        counts: dict[tuple[str, DeadLetterStage], int] = {}
        async for letter, _ in self._walk(_Position(), since):
            counts[(letter.channel, letter.stage)] = counts.get((letter.channel, letter.stage), 0) + 1
        return counts

    async def _walk(self, start: _Position, since: float | None) -> AsyncIterator[tuple[DeadLetter, _Position]]:
        """Every live letter after ``start``, newest first, with its position in the index.

        Each batch resumes from the last position by score and id rather than by offset, so
        letters parked or dropped meanwhile never make the walk skip or repeat one.
        """
        now = time.time()
        oldest = now - self._retention_s
        await self._redis.zremrangebyscore(self._keys.dlq, "-inf", f"({oldest!r}")
        floor = repr(max(oldest, since)) if since is not None else repr(oldest)
        position = start
        while True:
            rows = await self._next_rows(position, floor)
            if not rows:
                return
            raws = await self._redis.mget([self._keys.dead_letter(letter_id) for letter_id, _ in rows])
            expired = [letter_id for (letter_id, _), raw in zip(rows, raws, strict=True) if raw is None]
            if expired:
                await self._redis.zrem(self._keys.dlq, *expired)
            for (letter_id, score), raw in zip(rows, raws, strict=True):
                position = _Position(score, letter_id)
                if raw is not None:
                    yield DeadLetter.from_json(raw), position

    async def _next_rows(self, position: _Position, floor: str) -> builtins.list[tuple[str, float]]:
        """The next batch of ``(id, score)`` after ``position``: first the ids that share its score
        (Redis orders them by id, descending here), then strictly older scores."""
        rows: builtins.list[tuple[str, float]] = []
        top = "+inf"
        if position.letter_id is not None:
            top = f"({position.score!r}"
            if position.score >= float(floor):
                same = await self._redis.zrevrangebyscore(
                    self._keys.dlq, repr(position.score), repr(position.score), withscores=True
                )
                rows = [(as_text(m), float(s)) for m, s in _pairs(same) if as_text(m) < position.letter_id]
        older = await self._redis.zrevrangebyscore(self._keys.dlq, top, floor, start=0, num=_BATCH, withscores=True)
        return rows + [(as_text(m), float(s)) for m, s in _pairs(older)]

    async def get(self, letter_id: str) -> DeadLetter | None:
        raw = await self._redis.get(self._keys.dead_letter(letter_id))
        return DeadLetter.from_json(raw) if raw else None

    async def drop(self, letter_id: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.dead_letter(letter_id))
            pipe.zrem(self._keys.dlq, letter_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def replay(self, letter_id: str) -> ConversationKey | None:
        """Queue the letter again at the end of its conversation's inbox and forget it.

        A delivery failure with its reply comes back as a ``PUSH`` carrying that reply (text and
        attachments) to the original route: the answer is delivered, OCS is not asked again.
        Its ``context`` also holds the rendered parts that were still undelivered (``parts``),
        for an engine that resumes there rather than sending the whole reply again.
        Any other letter puts the original inbound back (with the rest of its burst, when the turn
        covered several messages), so the turn starts afresh (a new OCS message). The caller
        enqueues the returned conversation. Taking the letter and queueing it are one script, so a
        letter replayed twice at once is queued once (the other gets None).

        Raises:
            ValueError: the letter's inbound cannot be read (an unreadable item); drop it.
        """
        letter = await self.get(letter_id)
        if letter is None:
            return None
        try:
            original = Inbound.from_json(letter.inbound)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"dead letter {letter_id} holds no readable message ({exc}); drop it") from None
        conv = original.key
        item, more = letter.inbound, letter.batch
        if letter.stage is DeadLetterStage.DELIVERY and letter.reply is not None:
            item, more = _as_push(original, letter, letter.reply).to_json(), ()
        keys = [self._keys.dead_letter(letter_id), self._keys.dlq, self._keys.inbox(conv), self._keys.active, self._keys.waiting]
        received_at = Inbound.from_json(item).received_at
        if not await _REPLAY(self._redis, keys, [letter_id, item, str(conv), repr(float(received_at)), *more]):
            return None  # replayed (or dropped) by someone else meanwhile
        return conv


def _pairs(rows: Any) -> builtins.list[tuple[Any, Any]]:
    """``withscores`` replies as (member, score) pairs (the typed stubs do not say so)."""
    return [(member, score) for member, score in rows]


def _as_push(original: Inbound, letter: DeadLetter, reply: Reply) -> Inbound:
    """A ready answer as the inbox carries one (the engine starts a PUSH from its text)."""
    context: dict[str, Any] = {"attachments": [asdict(attachment) for attachment in reply.attachments]}
    if letter.parts:
        context.update(ReplayedParts.of_letter(letter).to_context())
    return Inbound(
        key=original.key,
        event_id=f"replay:{letter.id}",
        kind=InboundKind.PUSH,
        sender_id="ocs",
        text=reply.text,
        context=context,
        route=dict(original.route),
        received_at=time.time(),
    )


@dataclass(frozen=True, slots=True)
class ReplayedParts:
    """The undelivered rest of a reply, as a replayed delivery carries it in its inbound's
    ``context``: the parts, where they stood in the whole reply and whose reply it was, so the
    replay numbers them as the first delivery would have ("3 of 3", not "1 of 3") under the same
    delivery ids. This class is the one reader and writer of that layout."""

    parts: tuple[Outgoing, ...]
    #: The index of ``parts[0]`` in the whole reply (the parts delivered before the failure).
    first: int = 0
    #: The id of the turn whose reply this is ("" in letters parked before it was kept).
    reply_id: str = ""

    @property
    def total(self) -> int:
        return self.first + len(self.parts)

    @classmethod
    def of_letter(cls, letter: DeadLetter) -> ReplayedParts:
        delivered = letter.ledger.get("delivered")
        first = delivered if isinstance(delivered, int) and delivered >= 0 else 0
        return cls(parts=letter.parts, first=first, reply_id=str(letter.ledger.get("turn") or ""))

    def to_context(self) -> dict[str, Any]:
        return {"parts": [part.to_dict() for part in self.parts], "first_part": self.first, "reply_id": self.reply_id}

    @classmethod
    def from_context(cls, context: Mapping[str, Any]) -> ReplayedParts | None:
        """The replayed parts an inbound's context carries; None when it carries none."""
        stored = context.get("parts")
        if not isinstance(stored, list) or not stored:
            return None
        first = context.get("first_part")
        return cls(
            parts=tuple(Outgoing.from_dict(part) for part in stored),
            first=first if isinstance(first, int) and not isinstance(first, bool) and first >= 0 else 0,
            reply_id=str(context.get("reply_id") or ""),
        )


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIX = re.compile(r"^\s*\d{9,}(?:\.\d+)?\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": _DAY_S, "w": 7 * _DAY_S}


def since_from_text(text: str, *, now: float) -> float:
    """``--since`` as Unix seconds: a span back from ``now`` (``90m``, ``1h``, ``2d``, ``1w``), an
    ISO date or time (``2026-11-01``, ``2026-11-01T08:30``; UTC unless it says otherwise) or Unix
    seconds as they are (``1793491200.5``, what the next-page command of ``dlq list`` carries).

    Raises:
        ValueError: neither form.
    """
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNIT_S[relative.group(2)]
    if _UNIX.match(text):
        return float(text)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: use a span like 1h or 2d, or a date like 2026-11-01") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
