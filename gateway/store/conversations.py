"""What the gateway remembers about a conversation: its OCS session, where replies go, whether
the user is gone, and the cursor of the watch. One Redis hash, ``conv:{conv}``.

The owner of a conversation reads it with its turn (``TurnLedger.load``, ``parse_record``) and
writes it through its lease: ``ConversationStore`` builds those fenced writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from gateway.core.keys import Keys, as_text
from gateway.core.models import ConversationKey, OCSSession, Route
from gateway.store.lease import Op

__all__ = ["ConversationRecord", "ConversationStore", "parse_record"]

_SESSION_FIELDS = ("session_id", "session_token", "chatbot_id", "started_at")
_INTENT_FIELDS = ("start_label", "start_at")
#: Conversations nobody wrote to for this long are forgotten by Redis (their session with them).
RECORD_TTL_S = 90 * 24 * 3600


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    session: OCSSession | None
    route: Route
    gone: bool
    #: ``created_at`` of the last OCS message the watch handled (exclusive cursor, docs/OCS.md §6.3).
    cursor: str | None
    last_active: float
    last_polled: float
    #: User messages this gateway has put into the current session; None for a session started
    #: before the gateway counted (the history is counted once instead).
    user_messages: int | None = None
    #: The label of a session start whose answer has not been recorded yet (written before the
    #: start, cleared with the session it made): while set, OCS may hold a session we never
    #: heard of. ``start_at`` is when it was written (shared clock).
    start_label: str = ""
    start_at: float = 0.0


def parse_record(data: dict[Any, Any]) -> ConversationRecord:
    raw = {as_text(k): as_text(v) for k, v in data.items()}
    session = None
    if all(raw.get(f) for f in _SESSION_FIELDS):
        session = OCSSession(raw["session_id"], raw["session_token"], raw["chatbot_id"], float(raw["started_at"]))
    counted = raw.get("user_messages")
    return ConversationRecord(
        session=session,
        route=json.loads(raw["route"]) if raw.get("route") else {},
        gone=raw.get("gone") == "1",
        cursor=raw.get("cursor") or None,
        last_active=float(raw.get("last_active") or 0),
        last_polled=float(raw.get("last_polled") or 0),
        user_messages=int(counted) if counted not in (None, "") else None,
        start_label=raw.get("start_label") or "",
        start_at=float(raw.get("start_at") or 0),
    )


class ConversationStore:
    """Builds the fenced writes of the conversation record. Each method returns the record as it
    will be once its writes are applied, with those writes (as ``TurnLedger.update`` does for the
    turn): the owner applies both together (``workers/hold.py``), so its memory is never a copy
    edited by hand beside the write."""

    def __init__(self, keys: Keys) -> None:
        self._keys = keys

    def save_session(
        self, conv: ConversationKey, record: ConversationRecord, session: OCSSession
    ) -> tuple[ConversationRecord, list[Op]]:
        """A new session: its cursor and its count of user messages start again, and the start's
        intent (``intend_start``) is done."""
        key = self._keys.conversation(conv)
        fields = (
            "session_id", session.session_id, "session_token", session.session_token,
            "chatbot_id", session.chatbot_id, "started_at", repr(session.started_at),
            "cursor", "", "user_messages", "0",
        )
        updated = replace(record, session=session, cursor=None, user_messages=0, start_label="", start_at=0.0)
        return updated, [Op("HSET", key, fields), Op("HDEL", key, _INTENT_FIELDS), Op("EXPIRE", key, (RECORD_TTL_S,))]

    def intend_start(
        self, conv: ConversationKey, record: ConversationRecord, *, label: str, now: float
    ) -> tuple[ConversationRecord, list[Op]]:
        """About to start a session labelled ``label``: recorded first, so that whoever finds it
        still set knows a start's answer was lost and can look for the session it made."""
        key = self._keys.conversation(conv)
        updated = replace(record, start_label=label, start_at=now)
        return updated, [Op("HSET", key, ("start_label", label, "start_at", repr(now))), Op("EXPIRE", key, (RECORD_TTL_S,))]

    def drop_intent(self, conv: ConversationKey, record: ConversationRecord) -> tuple[ConversationRecord, list[Op]]:
        """The start surely made no session (refused, or it never left): nothing to look for."""
        return replace(record, start_label="", start_at=0.0), [Op("HDEL", self._keys.conversation(conv), _INTENT_FIELDS)]

    def forget_session(self, conv: ConversationKey, record: ConversationRecord) -> tuple[ConversationRecord, list[Op]]:
        """The session is over (reset, expired, forgotten by OCS): the next turn starts another."""
        updated = replace(record, session=None, cursor=None, user_messages=None)
        return updated, [
            Op("HDEL", self._keys.conversation(conv), (*_SESSION_FIELDS, "cursor", "user_messages")),
            Op("DEL", self._keys.fingerprints(conv)),
            Op("ZREM", self._keys.watch, (str(conv),)),
        ]

    def touch(
        self, conv: ConversationKey, record: ConversationRecord, route: Route, *, now: float
    ) -> tuple[ConversationRecord, list[Op]]:
        """Remember where replies go and that the user was active now."""
        key = self._keys.conversation(conv)
        updated = replace(record, route=dict(route), last_active=now)
        return updated, [
            Op("HSET", key, ("route", json.dumps(dict(route)), "last_active", repr(now))),
            Op("EXPIRE", key, (RECORD_TTL_S,)),
        ]

    def set_gone(self, conv: ConversationKey, record: ConversationRecord, gone: bool) -> tuple[ConversationRecord, list[Op]]:
        key = self._keys.conversation(conv)
        ops = [Op("HSET", key, ("gone", "1"))] if gone else [Op("HDEL", key, ("gone",))]
        return replace(record, gone=gone), ops

    def count(self, conv: ConversationKey, record: ConversationRecord, user_messages: int) -> tuple[ConversationRecord, list[Op]]:
        """How many user messages the current session holds (``ConversationRecord.user_messages``)."""
        ops = [Op("HSET", self._keys.conversation(conv), ("user_messages", str(user_messages)))]
        return replace(record, user_messages=user_messages), ops

    def polled(
        self, conv: ConversationKey, record: ConversationRecord, *, cursor: str | None, now: float
    ) -> tuple[ConversationRecord, list[Op]]:
        """The watch looked at the session now, and handled its messages up to ``cursor``."""
        fields: tuple[str, ...] = ("last_polled", repr(now))
        if cursor:
            fields += ("cursor", cursor)
        updated = replace(record, cursor=cursor or record.cursor, last_polled=now)
        return updated, [Op("HSET", self._keys.conversation(conv), fields)]
