"""Generic webhooks: any app that can POST JSON talks to an OCS bot through this channel.

Inbound: ``POST /webhooks/{channel}`` signed with Standard Webhooks; the body is documented in
``docs/WEBHOOKS.md``. Outbound: each reply part is POSTed to the channel's callback URL, signed
the same way with a ``webhook-id`` that stays the same on every retry, so the receiver can drop
repeats. With ``show_progress: true`` each new progress line OCS reports while it works is one
signed ``progress`` callback too, sent once (progress is best effort: never retried).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapters.webhook import signing
from adapters.webhook.config import WebhookChannelConfig
from gateway.core import safe_json
from gateway.core.channel import ChannelAdapter, InboundFile, InboundRequest, VoiceNote
from gateway.core.errors import (
    AttachmentUnavailable,
    DeliveryRejected,
    PayloadInvalid,
    RecipientGone,
    RetryLater,
)
from gateway.core.fetching import fetch_url
from gateway.core.models import (
    Attachment,
    ConversationKey,
    Delivery,
    Inbound,
    InboundKind,
    Outgoing,
    ParsedRequest,
    Reply,
    Route,
)

__all__ = ["PROGRESS_TIMEOUT_S", "WebhookAdapter", "WebhookMessage", "progress_id"]

log = logging.getLogger(__name__)

#: OCS takes files up to 50 MB (docs/OCS.md §3.3); fetching more would only fail later.
MAX_ATTACHMENT_BYTES = 50 * 1024 * 1024
#: Reply files up to this size travel inside the callback, so the receiver needs no OCS key.
INLINE_FILE_BYTES = 5 * 1024 * 1024
#: A progress callback must not hold the turn: the poll that carried the line waits for it.
PROGRESS_TIMEOUT_S = 5.0
#: Turns whose last progress line this process remembers (the oldest are forgotten first).
_REMEMBERED = 4096


class _Sender(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(min_length=1, max_length=200)
    name: str | None = Field(default=None, max_length=320)


class _AttachmentIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str
    name: str | None = None
    content_type: str = "application/octet-stream"

    @model_validator(mode="after")
    def _http(self) -> _AttachmentIn:
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError("attachment url must be http(s)")
        return self


class WebhookMessage(BaseModel):
    """The documented inbound body."""

    model_config = ConfigDict(extra="ignore")
    conversation_id: str = Field(min_length=1, max_length=200)
    sender: _Sender
    text: str = ""
    attachments: list[_AttachmentIn] = Field(default_factory=list, max_length=10)
    context: dict[str, Any] = Field(default_factory=dict)
    reset: bool = False

    @model_validator(mode="after")
    def _says_something(self) -> WebhookMessage:
        if not self.reset and not self.text.strip() and not self.attachments:
            raise ValueError("a message needs text or attachments (or reset: true)")
        if "\n" in self.conversation_id:
            raise ValueError("conversation_id cannot contain a newline")
        return self


class WebhookAdapter(ChannelAdapter[WebhookChannelConfig]):
    kind = "webhook"
    inbound_path = "/webhooks/{channel}"
    #: A spoken answer is an ``audio/ogg`` (Opus) attachment with ``voice: true`` (docs/WEBHOOKS.md).
    voice_format = "ogg"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._key = signing.decode_secret(self.config.secret.reveal())
        self._progress: OrderedDict[str, str] = OrderedDict()  # turn id → the last line sent

    # -- edge -----------------------------------------------------------------------------

    async def verify(self, request: InboundRequest) -> None:
        signing.verify(self._key, request.headers, request.body)

    async def parse(self, request: InboundRequest) -> ParsedRequest:
        # The strict loader first: pydantic's own JSON parser takes NaN and 1e999 into
        # ``context``, which then cannot be sent to OCS, ever (issue 8).
        data = safe_json.loads(request.body)
        if not isinstance(data, dict):
            raise PayloadInvalid("the body is not a JSON object")
        try:
            message = WebhookMessage.model_validate(data)
        except ValidationError as exc:
            raise PayloadInvalid(_reason(exc)) from None
        event_id = request.headers["webhook-id"]
        inbound = Inbound(
            key=ConversationKey(self.name, message.conversation_id),
            event_id=event_id,
            kind=InboundKind.RESET if message.reset else InboundKind.MESSAGE,
            sender_id=message.sender.id,
            sender_name=message.sender.name,
            text=message.text,
            attachments=tuple(
                Attachment(ref=a.url, name=a.name or urlsplit(a.url).path.rsplit("/", 1)[-1] or "file", content_type=a.content_type)
                for a in message.attachments
            ),
            context=message.context,
            route={"conversation_id": message.conversation_id, "in_reply_to": event_id},
            received_at=request.received_at,
        )
        return ParsedRequest(inbounds=(inbound,))

    # -- workers --------------------------------------------------------------------------

    def render(self, reply: Reply) -> list[Outgoing]:
        """One part for the text, one per file: the receiver gets files as they are ready."""
        hints = {"kind": str(reply.kind), "in_reply_to": reply.in_reply_to or ""}
        parts = [Outgoing(text=reply.text, plain=reply.text, hints=hints)] if reply.text else []
        parts += [Outgoing(attachment=a, hints=hints) for a in reply.attachments]
        return parts

    def reply_route(self, routes: Sequence[Route]) -> Route:
        """The answer to a burst names every message it answers (``in_reply_to_all``, oldest
        first); ``in_reply_to`` stays the last one's webhook-id, as for a single message."""
        last = routes[-1]
        ids = [route["in_reply_to"] for route in routes if route.get("in_reply_to")]
        return {**last, "in_reply_to_all": json.dumps(ids)} if len(ids) > 1 else last

    async def send(self, route: Route, outgoing: Outgoing, delivery: Delivery | None = None) -> str:
        attachments = [await self._attachment(outgoing)] if outgoing.attachment else []
        return await self._callback(route, outgoing.hints, outgoing.text, attachments, delivery)

    async def send_voice(self, route: Route, note: VoiceNote, delivery: Delivery | None = None) -> str:
        """The spoken answer as one callback: an audio attachment, bytes inline, ``voice: true``."""
        audio: dict[str, Any] = {
            "name": note.name, "content_type": note.content_type, "size": len(note.data), "voice": True,
            "duration_s": note.duration_s, "content_base64": base64.b64encode(note.data).decode(),
        }
        return await self._callback(route, {"kind": "answer", "in_reply_to": note.in_reply_to or ""}, "", [audio], delivery)

    async def _callback(
        self, route: Route, hints: Mapping[str, str], text: str, attachments: list[dict[str, Any]], delivery: Delivery | None
    ) -> str:
        if delivery is None:
            delivery = Delivery(id=f"msg_{time.time_ns()}")
        delivery_id = delivery.id
        in_reply_to = hints.get("in_reply_to") or None
        payload: dict[str, Any] = {
            "type": "message",
            "conversation_id": route["conversation_id"],
            "in_reply_to": in_reply_to,
            "in_reply_to_all": _replied_ids(route, in_reply_to),
            "kind": hints.get("kind", "answer"),
            "text": text,
            "attachments": attachments,
            "part": delivery.index + 1,
            "parts": delivery.total,
        }
        body = json.dumps(payload, ensure_ascii=False).encode()
        url = self.config.callback_url
        if urlsplit(url).hostname not in self.config.callback_allowlist:
            raise DeliveryRejected(f"callback host of {url} is not on the allowlist")
        headers = signing.signed_headers(self._key, delivery_id, body)
        try:
            response = await self.services.http.post(url, content=body, headers=headers, timeout=15.0)
        except httpx.TransportError as exc:
            raise RetryLater(5.0, f"callback unreachable: {type(exc).__name__}") from exc
        return _classify(response, delivery_id)

    async def show_progress(self, route: Route, text: str, turn_id: str) -> bool:
        """One signed ``progress`` callback per new line, when the channel opted in
        (``show_progress: true``). A line is sent once, delivered or not: progress is best
        effort, and a receiver that is down is not asked again at every poll."""
        line = text.strip()
        url = self.config.callback_url
        if not self.config.show_progress or not line or not route.get("conversation_id"):
            return False
        if urlsplit(url).hostname not in self.config.callback_allowlist:
            return False
        if self._progress.get(turn_id) == line:
            return True
        self._progress[turn_id] = line
        self._progress.move_to_end(turn_id)
        while len(self._progress) > _REMEMBERED:
            self._progress.popitem(last=False)
        payload = {
            "type": "progress",
            "kind": "progress",
            "conversation_id": route["conversation_id"],
            "in_reply_to": route.get("in_reply_to") or None,
            "text": line,
        }
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = signing.signed_headers(self._key, progress_id(turn_id, line), body)
        try:
            response = await self.services.http.post(url, content=body, headers=headers, timeout=PROGRESS_TIMEOUT_S)
        except httpx.HTTPError as exc:
            log.debug("progress callback not delivered: %s", type(exc).__name__)
            return False
        if response.status_code >= 300:
            log.debug("progress callback answered %s", response.status_code)
            return False
        return True

    async def _attachment(self, outgoing: Outgoing) -> dict[str, Any]:
        att = outgoing.attachment
        assert att is not None
        item: dict[str, Any] = {"name": att.name, "content_type": att.content_type, "size": att.size, "url": att.content_url}
        if att.size <= INLINE_FILE_BYTES and self.services.fetch_ocs_file is not None:
            try:
                item["content_base64"] = base64.b64encode(await self.services.fetch_ocs_file(att)).decode()
            except AttachmentUnavailable as exc:
                # The receiver gets the file's description without its bytes, as for a big file.
                log.warning("reply attachment %s not inlined: %s", att.name, exc.reason)
        return item

    async def download(self, attachment: Attachment, route: Route, *, max_bytes: int | None = None) -> InboundFile:
        """Fetch a user's file by the URL the sender gave, through the SSRF checks, at most 50 MB
        or ``max_bytes`` if lower (cut off while it streams).

        Raises:
            AttachmentUnavailable: any failure (refused address, host down, timeout, too big,
                an HTTP error): the text goes on with a note, a file never holds up a turn.
        """
        limit = MAX_ATTACHMENT_BYTES if max_bytes is None else min(max_bytes, MAX_ATTACHMENT_BYTES)
        fetched = await fetch_url(attachment.ref, allowlist=self.services.config.fetch_allowlist, max_bytes=limit)
        content_type = attachment.content_type
        if content_type == "application/octet-stream" and fetched.content_type:
            content_type = fetched.content_type
        return InboundFile(name=attachment.name, content_type=content_type, data=fetched.data)


def _replied_ids(route: Route, in_reply_to: str | None) -> list[str]:
    """Every webhook-id the answer answers: a burst's, or the one message's (none for a message
    the bot started)."""
    stored = route.get("in_reply_to_all")
    if stored:
        ids = json.loads(stored)
        if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
            return ids
    return [in_reply_to] if in_reply_to else []
def progress_id(turn_id: str, line: str) -> str:
    """The ``webhook-id`` of a progress callback: the same for the same line of the same turn,
    so a receiver drops a repeat as it drops a repeated reply part."""
    digest = hashlib.sha256(f"{turn_id}\n{line}".encode()).hexdigest()[:24]
    return f"progress_{digest}"


def _classify(response: httpx.Response, delivery_id: str) -> str:
    status = response.status_code
    if status < 300:
        return delivery_id
    if status == 410:  # Standard Webhooks: 410 Gone means unsubscribe
        raise RecipientGone("callback answered 410 Gone")
    if status == 429 or status >= 500 or status == 408:
        try:
            retry_after = float(response.headers.get("retry-after", "5"))
        except ValueError:
            retry_after = 5.0
        raise RetryLater(retry_after, f"callback answered {status}", rate_limited=status == 429)
    raise DeliveryRejected(f"callback answered {status}: {response.text[:200]}")


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
