"""What the OCS Chat API answers, as typed values parsed once where the client reads the JSON
(docs/OCS.md §4.3, §4.4, §5).

The parsers are lenient the way the engine always was: fields OCS adds later are ignored, odd
values are coerced (a missing ``content`` is ``""``, a size that is not a number is 0), and
entries that are not objects are skipped, so a new shape of answer never sinks a turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

from gateway.core.models import ReplyAttachment

__all__ = [
    "MessageRole",
    "OCSMessage",
    "SessionPage",
    "SessionStatus",
    "SessionSummary",
    "TaskPoll",
    "TaskStatus",
    "parse_attachment",
    "parse_http_date",
    "parse_timestamp",
]


class MessageRole(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"


class TaskStatus(StrEnum):
    #: Still running, unknown, or expired: OCS cannot tell these apart (docs/OCS.md §0.9).
    PROCESSING = "processing"
    COMPLETE = "complete"
    ERROR = "error"


class SessionStatus(StrEnum):
    """``session_status`` of the session messages: ``ended`` only once OCS completed it (docs/OCS.md §6.1)."""

    ACTIVE = "active"
    ENDED = "ended"


def parse_attachment(data: Mapping[str, Any]) -> ReplyAttachment:
    """A docs/OCS.md §5 File object (also the stored form of a pushed message's attachments)."""
    try:
        size = int(data.get("size") or 0)
    except (TypeError, ValueError):
        size = 0
    return ReplyAttachment(
        name=str(data.get("name") or "file"),
        content_type=str(data.get("content_type") or "application/octet-stream"),
        size=size,
        content_url=str(data.get("content_url") or ""),
    )


@dataclass(frozen=True, slots=True)
class OCSMessage:
    """One docs/OCS.md §5 Message. ``role`` is None for a role this client does not know."""

    role: MessageRole | None
    content: str
    #: OCS's own spelling, kept as is: it is the ``since`` cursor (docs/OCS.md §6.3). None when absent.
    created_at: str | None
    attachments: tuple[ReplyAttachment, ...] = ()

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> OCSMessage:
        created_at = data.get("created_at")
        files = data.get("attachments")
        return cls(
            role=_role(data.get("role")),
            content=str(data.get("content") or ""),
            created_at=str(created_at) if created_at else None,
            attachments=tuple(parse_attachment(a) for a in _items(files)),
        )


@dataclass(frozen=True, slots=True)
class TaskPoll:
    """What one task poll found (docs/OCS.md §4.3). Progress text while processing is not a reply:
    it is kept apart (``progress``), for the platform to show while the user waits."""

    status: TaskStatus
    message: OCSMessage | None = None
    #: For ``ERROR``: OCS's text, written for the end user.
    error: str | None = None
    #: For ``PROCESSING``: the bot's current progress line, if OCS gave one (never the answer).
    progress: str | None = None
    #: OCS's clock when it answered (the HTTP ``Date``, epoch s, whole seconds); None without one.
    #: With the reply's ``created_at`` it tells when the bot finished (``workers/server_clock.py``).
    served_at: float | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, failed: bool) -> TaskPoll:
        """``failed``: the answer's HTTP status was an error (OCS's 400 and 500 task failures)."""
        if failed or data.get("status") == "error":
            return cls(TaskStatus.ERROR, error=str(data.get("error") or "Unknown error"))
        message = data.get("message")
        if data.get("status") == "complete" and isinstance(message, Mapping):
            return cls(TaskStatus.COMPLETE, message=OCSMessage.parse(message))
        content = message.get("content") if isinstance(message, Mapping) else None
        line = content.strip() if isinstance(content, str) else ""
        return cls(TaskStatus.PROCESSING, progress=line or None)


@dataclass(frozen=True, slots=True)
class SessionPage:
    """One page of a session's messages (docs/OCS.md §4.4), oldest first."""

    messages: tuple[OCSMessage, ...]
    has_more: bool
    session_status: SessionStatus

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> SessionPage:
        status = SessionStatus.ENDED if data.get("session_status") == "ended" else SessionStatus.ACTIVE
        messages = tuple(OCSMessage.parse(m) for m in _items(data.get("messages")))
        return cls(messages, bool(data.get("has_more")), status)


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One session of the sessions API's list (``ExperimentSession``): what the gateway reads
    of it. ``status`` is OCS's raw value (``active``, ``pending-review``, ``complete``, …)."""

    session_id: str
    remote_id: str
    #: Epoch seconds; None when absent or unreadable.
    created_at: float | None
    status: str
    tags: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> SessionSummary:
        participant = data.get("participant")
        remote_id = participant.get("remote_id") if isinstance(participant, Mapping) else None
        created_at = data.get("created_at")
        tags = data.get("tags")
        return cls(
            session_id=str(data.get("id") or ""),
            remote_id=str(remote_id or ""),
            created_at=parse_timestamp(created_at) if isinstance(created_at, str) else None,
            status=str(data.get("status") or ""),
            tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
        )


def parse_http_date(values: Sequence[str]) -> float | None:
    """Epoch seconds of an HTTP ``Date`` (RFC 9110 section 5.6.7); the last one when a server in front
    added its own before the application's; None if absent or unreadable."""
    if not values:
        return None
    try:
        parsed = parsedate_to_datetime(values[-1])
    except (TypeError, ValueError, IndexError):
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def parse_timestamp(value: str) -> float | None:
    """Epoch seconds of an OCS timestamp (``…SS.ffffffZ`` or ``…SSZ``, docs/OCS.md §6.3); None if unreadable."""
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _role(value: Any) -> MessageRole | None:
    try:
        return MessageRole(value)
    except ValueError:
        return None


def _items(value: Any) -> list[Mapping[str, Any]]:
    """The objects of a JSON array; anything else in it, or a value that is no array, is skipped."""
    if not isinstance(value, (list, tuple)):
        return []
    return [item for item in value if isinstance(item, Mapping)]
