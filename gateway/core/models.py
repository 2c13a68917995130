"""The canonical values that travel between the edge, the queue, the workers and the adapters.

Every package passes these typed values, never loose dicts, whose keys nothing checks and every
reader would guess at. They
are frozen, and each has a JSON form because they are stored in Redis between steps.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "Attachment",
    "ConversationKey",
    "Delivery",
    "Inbound",
    "InboundKind",
    "OCSSession",
    "Outgoing",
    "ParsedRequest",
    "Reply",
    "ReplyAttachment",
    "ReplyKind",
    "Route",
]

#: Where a reply goes on the platform (chat id, thread, callback ids...). Adapter-defined, flat
#: strings only, so that it survives JSON and Redis hashes unchanged.
Route = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """One conversation on one channel: the unit of ordering and of OCS sessions.

    ``conversation`` is chosen by the adapter (a Telegram chat and topic, a Slack thread, a
    webhook conversation id); it may contain any character but ``\\n``.
    """

    channel: str
    conversation: str

    def __str__(self) -> str:
        return f"{self.channel}/{self.conversation}"

    @classmethod
    def parse(cls, text: str) -> ConversationKey:
        channel, _, conversation = text.partition("/")
        if not channel or not conversation:
            raise ValueError(f"not a conversation key: {text!r}")
        return cls(channel, conversation)


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file the user sent; ``ref`` is what the adapter needs to download it (URL, file id)."""

    ref: str
    name: str
    content_type: str = "application/octet-stream"
    size: int | None = None
    #: The adapter says the user spoke it (a voice note, an audio clip, a video note's sound): it
    #: is transcribed, never uploaded (``spoken``; docs/VOICE.md). Audio types count without it.
    voice: bool = False
    #: How long the recording is, when the platform says (checked before the download).
    duration_s: float | None = None

    @property
    def spoken(self) -> bool:
        """Whether this is speech to transcribe: flagged by the adapter, or any ``audio/*`` file."""
        return self.voice or self.content_type.lower().startswith("audio/")

    def to_dict(self) -> dict[str, Any]:
        """The stored form; the voice fields only when set, so items without them read as before."""
        data: dict[str, Any] = {"ref": self.ref, "name": self.name, "content_type": self.content_type, "size": self.size}
        if self.voice:
            data["voice"] = True
        if self.duration_s is not None:
            data["duration_s"] = self.duration_s
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attachment:
        """Reads what ``to_dict`` wrote, and ignores keys a later version may add."""
        duration = data.get("duration_s")
        return cls(
            ref=data["ref"], name=data["name"], content_type=data.get("content_type", "application/octet-stream"),
            size=data.get("size"), voice=bool(data.get("voice", False)),
            duration_s=float(duration) if isinstance(duration, (int, float)) else None,
        )


class InboundKind(StrEnum):
    MESSAGE = "message"
    #: The user asked to start over: end the OCS session, the next message starts a new one.
    RESET = "reset"
    #: A message OCS wrote on its own, found by the watch and queued behind the user's
    #: messages so it keeps their order; ``text`` is the bot's Markdown, ``context`` holds
    #: ``attachments``.
    PUSH = "push"


@dataclass(frozen=True, slots=True)
class Inbound:
    """One user event, normalised by an adapter and stored in the conversation's inbox."""

    key: ConversationKey
    #: The platform's id for this event (webhook-id, Telegram update id, Slack event id).
    event_id: str
    kind: InboundKind
    sender_id: str
    text: str = ""
    sender_name: str | None = None
    attachments: tuple[Attachment, ...] = ()
    #: Passed to OCS as the message ``context`` (stored at ``state.remote_context``).
    context: Mapping[str, Any] = field(default_factory=dict)
    #: Where the answer goes; also remembered for bot-initiated messages.
    route: Route = field(default_factory=dict)
    #: Extra keys that identify the same user message (Slack resends one message under a new
    #: event id); the event is a duplicate if any of these, or event_id, was seen before.
    alias_ids: tuple[str, ...] = ()
    received_at: float = 0.0

    def to_json(self) -> str:
        """The stored form. Raises ValueError on NaN/Infinity: JSON has no such numbers, so a
        message holding one could never be sent to OCS and would block its conversation."""
        # Built by hand: dataclasses.asdict deep-copies every value, and this runs once per
        # inbound event on the edge's hot path.
        data = {
            "key": str(self.key),
            "event_id": self.event_id,
            "kind": self.kind.value,
            "sender_id": self.sender_id,
            "text": self.text,
            "sender_name": self.sender_name,
            "attachments": [a.to_dict() for a in self.attachments],
            "context": dict(self.context),
            "route": dict(self.route),
            "alias_ids": list(self.alias_ids),
            "received_at": self.received_at,
        }
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Inbound:
        data = json.loads(raw)
        return cls(
            key=ConversationKey.parse(data["key"]),
            event_id=data["event_id"],
            kind=InboundKind(data["kind"]),
            sender_id=data["sender_id"],
            text=data.get("text", ""),
            sender_name=data.get("sender_name"),
            attachments=tuple(Attachment.from_dict(a) for a in data.get("attachments", ())),
            context=data.get("context") or {},
            route=data.get("route") or {},
            alias_ids=tuple(data.get("alias_ids", ())),
            received_at=data.get("received_at", 0.0),
        )


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What an adapter made of one HTTP request.

    ``inbounds`` are queued; ``response`` (a JSON-able value), when set, is what the platform
    expects in the 200 body (Slack's url_verification challenge).
    """

    inbounds: tuple[Inbound, ...] = ()
    response: Any = None


@dataclass(frozen=True, slots=True)
class ReplyAttachment:
    """A file the bot attached; ``content_url`` needs the OCS Bearer token (docs/OCS.md §0.10)."""

    name: str
    content_type: str
    size: int
    content_url: str


class ReplyKind(StrEnum):
    #: The bot's answer to a user message.
    ANSWER = "answer"
    #: A message OCS wrote on its own (schedules, triggers), found by the watch.
    PUSH = "push"
    #: Written by the gateway itself: a reset confirmation, a polite failure note.
    NOTICE = "notice"


@dataclass(frozen=True, slots=True)
class Reply:
    """What the bot said, in OCS's Markdown, before the adapter renders it."""

    text: str
    kind: ReplyKind = ReplyKind.ANSWER
    attachments: tuple[ReplyAttachment, ...] = ()
    #: The event id of the inbound this answers (None for pushes).
    in_reply_to: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reply:
        return cls(
            text=data["text"],
            kind=ReplyKind(data.get("kind", ReplyKind.ANSWER)),
            attachments=tuple(ReplyAttachment(**a) for a in data.get("attachments", ())),
            in_reply_to=data.get("in_reply_to"),
        )


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One platform message an adapter rendered from a Reply: a text chunk or one file.

    ``text`` is already in the platform's format (Telegram HTML, Slack mrkdwn, plain JSON text);
    ``plain`` is the same chunk without markup, for the fallback when formatting is refused.
    """

    text: str = ""
    plain: str = ""
    attachment: ReplyAttachment | None = None
    #: Free-form rendering hints of the adapter (parse mode...), strings only.
    hints: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Outgoing:
        att = data.get("attachment")
        return cls(
            text=data.get("text", ""),
            plain=data.get("plain", ""),
            attachment=ReplyAttachment(**att) if att else None,
            hints=data.get("hints") or {},
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """Which part of which reply ``ChannelAdapter.send`` carries.

    ``id`` is the same for every try of that part, a dead-letter replay's included (the webhook
    adapter sends it as ``webhook-id``, so a receiver can drop a repeat); ``index`` counts from
    0 over the whole reply and ``total`` is the reply's number of parts, so a replay that
    resumes at part 3 of 3 still says "3 of 3".
    """

    id: str
    index: int = 0
    total: int = 1

    @classmethod
    def of_part(cls, reply_id: str, index: int, total: int) -> Delivery:
        return cls(id=f"{reply_id}.{index}", index=index, total=total)


@dataclass(frozen=True, slots=True)
class OCSSession:
    """An OCS chat session the gateway holds for one conversation (docs/OCS.md §2.5): its id, the
    session token every call after start carries, the chatbot it belongs to, and when it began
    (the token dies a fixed time after that)."""

    session_id: str
    session_token: str
    chatbot_id: str
    started_at: float
