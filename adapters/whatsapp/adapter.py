"""``WhatsAppAdapter``: one business phone number on Meta's WhatsApp Cloud API.

Inbound: Meta verifies the callback URL with a GET handshake (``routes``), then POSTs every
webhook signed with the app secret (``verify``); ``parse`` stores when each user wrote (the
24-hour window), moves delivery records by the statuses, and hands the user messages over, each
keyed by its wamid. Outbound: text in WhatsApp's formatting, files uploaded or by link, quoted
replies, read receipts with "typing…", templates outside the window; paced across workers and
with Meta's error codes translated (``graph``). The Graph API is plain JSON over the gateway's
shared httpx pool: no SDK.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute
from starlette.routing import Route as HttpRoute

from adapters.whatsapp import media, outbound, receipts, signing, window
from adapters.whatsapp.config import WhatsAppChannelConfig
from adapters.whatsapp.format import MAX_TEXT_CHARS, markdown_to_whatsapp
from adapters.whatsapp.graph import (
    PAIR_RATE_LIMITED,
    REENGAGEMENT_REQUIRED,
    THROUGHPUT_LIMITED,
    GraphClient,
    GraphError,
    translate,
)
from adapters.whatsapp.inbound import read_webhook
from adapters.whatsapp.keys import WhatsAppKeys
from gateway.core.channel import AdapterServices, ChannelAdapter, InboundFile, InboundRequest, VoiceNote
from gateway.core.config import BotConfig
from gateway.core.errors import (
    AttachmentUnavailable,
    DeliveryError,
    DeliveryRejected,
    PacingWait,
    RetryLater,
    SignatureInvalid,
    StoreUnavailable,
)
from gateway.core.models import (
    Attachment,
    Delivery,
    Outgoing,
    ParsedRequest,
    Reply,
    ReplyAttachment,
    ReplyKind,
    Route,
)

__all__ = ["CLAIM_TTL_S", "SEND_TIMEOUT_S", "WhatsAppAdapter"]

log = logging.getLogger(__name__)

#: How long one message POST may take; a slower answer is retried (the claim decides).
SEND_TIMEOUT_S = 10.0
#: How long a part stays claimed by a sender that never learnt Meta's answer: Meta's ``sent``
#: status comes within seconds and settles it; past this the part is sent again.
CLAIM_TTL_S = 15.0


class WhatsAppAdapter(ChannelAdapter[WhatsAppChannelConfig]):
    """A WhatsApp business number: webhooks in, Graph API messages out."""

    kind = "whatsapp"
    inbound_path = "/whatsapp/{channel}"
    #: The typing indicator lasts 25 s or until we answer: refresh a little sooner.
    working_refresh_s = 20.0
    #: An ``audio/ogg`` (Opus) file plays as a voice message.
    voice_format = "ogg"

    def __init__(self, name: str, config: WhatsAppChannelConfig, bot: BotConfig, services: AdapterServices) -> None:
        super().__init__(name, config, bot, services)
        self._keys = WhatsAppKeys.of(services.keys)
        self._graph = GraphClient(services.http, base_url=config.api_base_url, token=config.access_token.reveal())

    # -- edge -----------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        """The GET handshake on the callback URL itself (the POST route is the edge's)."""
        return [HttpRoute(self.inbound_path.format(channel=self.name), self._handshake, methods=["GET"])]

    async def _handshake(self, request: Request) -> Response:
        try:
            challenge = signing.check_handshake(request.query_params, self.config.verify_token.reveal())
        except SignatureInvalid as exc:
            log.warning("whatsapp %s: webhook verification refused: %s", self.name, exc)
            return PlainTextResponse("verification failed", status_code=403)
        return PlainTextResponse(challenge)

    async def verify(self, request: InboundRequest) -> None:
        signing.verify(self.config.app_secret.reveal(), request.headers, request.body)

    async def parse(self, request: InboundRequest) -> ParsedRequest:
        content = read_webhook(
            request.body, channel=self.name, phone_number_id=self.config.phone_number_id,
            reset_keyword=self.config.reset_keyword, received_at=request.received_at,
        )
        try:
            # Before the 200, as the messages: a window recorded after a lost 503 only repeats.
            await window.record_last_wrote(self.services.redis, self._keys, self.name, content.last_wrote)
            await receipts.apply_statuses(self.services.redis, self._keys, self.name, content.statuses)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"whatsapp {self.name}: {type(exc).__name__}") from exc
        metrics = self.services.metrics
        for update in content.statuses:
            if metrics is not None:
                status = update.status if update.status in receipts.STATUSES else "other"
                metrics.delivery_receipts.labels(self.name, status).inc()
            if update.status == "failed":
                log.info("whatsapp %s: a message failed to deliver (code %s: %s)", self.name, update.error_code,
                         update.error_title)
        return ParsedRequest(inbounds=content.inbounds)

    # -- workers --------------------------------------------------------------------------------

    def render(self, reply: Reply) -> list[Outgoing]:
        hints = {"kind": str(reply.kind)}
        # A push may have to go as a template, whose parameter is short: split it to fit one.
        templated = reply.kind is ReplyKind.PUSH and self.config.template_name
        limit = outbound.TEMPLATE_TEXT_CHARS if templated else None
        chunks = markdown_to_whatsapp(reply.text, limit=limit or MAX_TEXT_CHARS)
        parts = [Outgoing(text=chunk, plain=chunk, hints=hints) for chunk in chunks]
        parts += [Outgoing(attachment=attachment, hints=hints) for attachment in reply.attachments]
        return parts

    def reply_route(self, routes: Sequence[Route]) -> Route:
        """Quote the message answered (``context.message_id``): the last of a burst, or always,
        or never, as ``quote_replies`` says."""
        last = routes[-1]
        mode = self.config.quote_replies
        if last.get("message_id") and (mode == "always" or (mode == "bursts" and len(routes) > 1)):
            return {**last, "reply_to": last["message_id"]}
        return last

    async def send(self, route: Route, outgoing: Outgoing, delivery: Delivery | None = None) -> str:
        wa_id = _recipient(route)
        delivery = delivery or Delivery(id=f"msg_{time.time_ns()}")
        # Only the first part quotes: the rest follow it.
        reply_to = route.get("reply_to") if delivery.index == 0 else None
        if not await self._window_open(wa_id):
            return await self._send_template(wa_id, _template_words(outgoing), delivery, why="outside the 24-hour window")
        if outgoing.attachment is not None:
            body = await self._attachment_body(wa_id, outgoing.attachment, reply_to)
        else:
            body = outbound.text_body(wa_id, outgoing.text, reply_to=reply_to)
        try:
            return await self._post(wa_id, body, delivery)
        except _Reengage:
            # The window closed between our look and Meta's (or our record missed a message).
            return await self._send_template(wa_id, _template_words(outgoing), delivery, why="Meta says re-engagement is required")

    async def send_voice(self, route: Route, note: VoiceNote, delivery: Delivery | None = None) -> str:
        wa_id = _recipient(route)
        delivery = delivery or Delivery(id=f"voice_{time.time_ns()}")
        if not await self._window_open(wa_id):
            raise DeliveryRejected("a voice note cannot go outside WhatsApp's 24-hour window")
        media_id = await media.upload(
            self._graph, self.config.phone_number_id, name=note.name, content_type=note.content_type, data=note.data
        )
        try:
            return await self._post(wa_id, outbound.media_body(wa_id, "audio", media_id=media_id), delivery)
        except _Reengage:
            raise DeliveryRejected("a voice note cannot go outside WhatsApp's 24-hour window") from None

    async def _window_open(self, wa_id: str) -> bool:
        try:
            return await window.is_open(self.services.redis, self._keys, self.name, wa_id)
        except (RedisError, OSError) as exc:
            raise RetryLater(2.0, f"window lookup failed: {type(exc).__name__}") from exc

    async def _send_template(self, wa_id: str, text: str, delivery: Delivery, *, why: str) -> str:
        name = self.config.template_name
        if not name:
            raise DeliveryRejected(
                f"WhatsApp message not sent: {why} (the user last wrote more than 24 hours ago) and the channel "
                "has no template_name; configure an approved template to send bot-initiated messages"
            )
        body = outbound.template_body(wa_id, name=name, language=self.config.template_language, text=text)
        try:
            return await self._post(wa_id, body, delivery)
        except _Reengage as exc:  # a template is never refused for the window: something else is wrong
            raise DeliveryRejected(str(exc)) from None

    async def _post(self, wa_id: str, body: Mapping[str, Any], delivery: Delivery) -> str:
        """Claim the part, pace, POST it, record its delivery; returns its wamid.

        Meta has no idempotency key, so the part is claimed by its delivery id first
        (``receipts.claim_part``): a part Meta already took returns its wamid unsent, and one
        whose sender is (or died) mid-request waits until Meta's status settles it or the claim
        lapses. The message carries the delivery id as ``biz_opaque_callback_data`` for that.

        Raises:
            _Reengage: Meta says the window is closed (131047).
            PacingWait / RetryLater / RecipientGone / DeliveryRejected.
        """
        redis, keys = self.services.redis, self._keys
        await outbound.pace(
            redis, keys, self.name, wa_id,
            pair_interval_s=self.config.pair_interval_s, per_second=self.config.messages_per_second,
        )
        try:
            claim = await receipts.claim_part(redis, keys, self.name, delivery.id, ttl_s=CLAIM_TTL_S)
        except (RedisError, OSError) as exc:
            raise RetryLater(2.0, f"delivery claim failed: {type(exc).__name__}") from exc
        if claim.wamid is not None:
            return claim.wamid
        if claim.marker is None:
            raise PacingWait(max(claim.wait_s, 0.5), "another worker is sending this part, or died sending it")
        body = {**body, "biz_opaque_callback_data": delivery.id}
        try:
            answer = await self._graph.attempt(
                "POST", f"{self.config.phone_number_id}/messages", json=body, timeout_s=SEND_TIMEOUT_S
            )
        except RetryLater:
            # The request may have left: keep the claim, so the status (or its lapse) decides.
            raise
        if isinstance(answer, GraphError):
            await self._release(delivery, claim.marker)
            raise await self._failure(wa_id, answer)
        messages = answer.get("messages")
        wamid = messages[0].get("id") if isinstance(messages, list) and messages and isinstance(messages[0], dict) else None
        if not isinstance(wamid, str) or not wamid:
            raise RetryLater(5.0, "WhatsApp accepted the message but answered no id")
        try:
            await receipts.record_sent(
                redis, keys, self.name, wamid, delivery_id=delivery.id, conversation=wa_id, at=time.time()
            )
        except (RedisError, OSError):
            # The message is out: its claim lapses, and Meta's status settles the part.
            log.warning("whatsapp %s: delivery record of a sent message not written", self.name)
        return wamid

    async def _release(self, delivery: Delivery, marker: str) -> None:
        try:
            await receipts.release_part(self.services.redis, self._keys, self.name, delivery.id, marker)
        except (RedisError, OSError):
            log.warning("whatsapp %s: a refused part's claim not released; it lapses", self.name)

    async def _failure(self, wa_id: str, error: GraphError) -> Exception:
        """The exception for Meta's error answer, after holding the key a rate limit names."""
        if error.code == REENGAGEMENT_REQUIRED:
            return _Reengage(error.describe())
        failure: DeliveryError = translate(error, error.retry_after)
        try:
            if error.code == PAIR_RATE_LIMITED:
                await outbound.hold_user(self.services.redis, self._keys, self.name, wa_id, self.config.pair_backoff_s)
                failure = RetryLater(self.config.pair_backoff_s, error.describe(), rate_limited=True)
            elif error.code == THROUGHPUT_LIMITED and isinstance(failure, RetryLater):
                await outbound.hold_number(self.services.redis, self._keys, self.name, failure.retry_after_s)
        except (RedisError, OSError):
            log.warning("whatsapp %s: could not hold the pacing key after a rate limit", self.name)
        return failure

    async def _attachment_body(self, wa_id: str, attachment: ReplyAttachment, reply_to: str | None) -> dict[str, Any]:
        """A file by link (``media_by_link``) or uploaded; one too big, or that OCS would not
        give us, goes as a text with its name and address."""
        kind = media.media_kind(attachment.content_type, attachment.size)
        if kind is not None and self.config.media_by_link:
            return outbound.media_body(wa_id, kind, link=attachment.content_url, filename=attachment.name, reply_to=reply_to)
        data: bytes | None = None
        if kind is not None and self.services.fetch_ocs_file is not None:
            try:
                data = await self.services.fetch_ocs_file(attachment)
            except AttachmentUnavailable as exc:
                log.warning("reply attachment %s not fetched, sending its link: %s", attachment.name, exc.reason)
        if data is not None:
            kind = media.media_kind(attachment.content_type, len(data))  # OCS may have under-reported the size
        if data is None or kind is None:
            return outbound.text_body(wa_id, _link_text(attachment), reply_to=reply_to)
        media_id = await media.upload(
            self._graph, self.config.phone_number_id, name=attachment.name, content_type=attachment.content_type, data=data
        )
        return outbound.media_body(wa_id, kind, media_id=media_id, filename=attachment.name, reply_to=reply_to)

    async def download(self, attachment: Attachment, route: Route, *, max_bytes: int | None = None) -> InboundFile:
        return await media.download(
            self._graph, attachment, media_hosts=self.config.media_hosts,
            fetch_allowlist=self.services.config.fetch_allowlist, max_bytes=max_bytes,
        )

    async def show_working(self, route: Route) -> None:
        """Mark the user's message read with "typing…" (25 s, or until the answer). Best effort."""
        message_id = route.get("message_id")
        if not self.config.read_receipts or not message_id:
            return
        body = outbound.read_body(message_id, typing=True)
        try:
            answer = await self._graph.attempt("POST", f"{self.config.phone_number_id}/messages", json=body, timeout_s=5.0)
        except RetryLater as exc:
            log.debug("whatsapp read receipt not sent: %s", exc)
            return
        if isinstance(answer, GraphError):
            log.debug("whatsapp read receipt refused: %s", answer.describe())

    def describe(self) -> Mapping[str, Any]:
        return {**super().describe(), "phone_number_id": self.config.phone_number_id,
                "template": self.config.template_name or ""}


class _Reengage(DeliveryRejected):
    """Meta refused a free-form message: the user's window is closed (131047)."""


def _recipient(route: Route) -> str:
    wa_id = route.get("wa_id")
    if not wa_id:
        raise DeliveryRejected("the route has no WhatsApp wa_id")
    return wa_id


def _template_words(outgoing: Outgoing) -> str:
    if outgoing.attachment is not None:
        return f"📎 {outgoing.attachment.name}"
    return outgoing.text


def _link_text(attachment: ReplyAttachment) -> str:
    return f"{attachment.name} ({attachment.size / (1024 * 1024):.1f} MB): {attachment.content_url}"
