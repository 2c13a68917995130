"""``TelegramAdapter``: one Telegram bot behind the ``ChannelAdapter`` seam.

Each channel gets its own PTB ``Bot`` with its own connection pool and its own pacing keys, so
one bot's trouble (a revoked token, flood control, a slow API) never touches another. The Bot
is a private attribute, never a base class (the Rasa lesson, STYLE §4).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping

from redis.exceptions import RedisError
from telegram import Bot, CallbackQuery
from telegram.error import TelegramError
from telegram.request import HTTPXRequest

from adapters.telegram import files, outbound
from adapters.telegram.format import render_markdown
from adapters.telegram.inbound import (
    BotIdentity,
    MembershipChange,
    check_secret,
    membership_change,
    needs_identity,
    read_update,
    to_inbound,
)
from gateway.core.channel import (
    AdapterServices,
    ChannelAdapter,
    InboundFile,
    InboundRequest,
)
from gateway.core.config import BotConfig, TelegramChannelConfig
from gateway.core.errors import DeliveryError, DeliveryRejected, StoreUnavailable
from gateway.core.models import (
    Attachment,
    Outgoing,
    ParsedRequest,
    Reply,
    ReplyAttachment,
    Route,
)

__all__ = ["TelegramAdapter"]

log = logging.getLogger(__name__)

_TOKEN_IN_URL = re.compile(r"/(file/)?bot\d+:[A-Za-z0-9_-]+")


class _RedactBotToken(logging.Filter):
    """httpx logs every request URL at INFO, and Bot API URLs carry the token (PROTOCOLS §1.1)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "/bot" in message:
            record.msg, record.args = _TOKEN_IN_URL.sub(r"/\1bot<token>", message), None
        return True


if not any(isinstance(f, _RedactBotToken) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(_RedactBotToken())


class TelegramAdapter(ChannelAdapter[TelegramChannelConfig]):
    """A Telegram bot: webhook updates in, HTML messages, files and typing out."""

    kind = "telegram"
    inbound_path = "/telegram/{channel}"
    #: "typing…" lasts about 5 s (PROTOCOLS §1.5): refresh a little sooner.
    working_refresh_s = 4.0

    def __init__(
        self, name: str, config: TelegramChannelConfig, bot: BotConfig, services: AdapterServices
    ) -> None:
        super().__init__(name, config, bot, services)
        self._request: HTTPXRequest | None = None
        self._bot: Bot | None = None
        self._me: BotIdentity | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Build the Bot and learn who it is; a Bot API outage here only defers getMe."""
        self._client()
        try:
            await self.identity()
        except DeliveryError as exc:
            # Not fatal: one bot's outage or revoked token must not stop the other channels.
            log.warning("telegram channel %s: getMe failed at startup (%s); will retry on use", self.name, exc)

    async def aclose(self) -> None:
        if self._request is not None:
            await self._request.shutdown()
        self._request = self._bot = None

    def _client(self) -> Bot:
        if self._bot is None:
            base = self.config.api_base_url
            # One pool serves both of PTB's request slots: we never call getUpdates.
            self._request = HTTPXRequest(
                connection_pool_size=32,
                read_timeout=15.0,
                media_write_timeout=120.0,  # a 50 MB upload on a modest uplink
                pool_timeout=5.0,
            )
            self._bot = Bot(
                self.config.token.reveal(),
                base_url=f"{base}/bot",
                base_file_url=f"{base}/file/bot",
                request=self._request,
                get_updates_request=self._request,
            )
        return self._bot

    async def identity(self) -> BotIdentity:
        """The bot's id and username (getMe once per process).

        Raises:
            RetryLater: the Bot API is unreachable.
            DeliveryRejected: the token is refused.
        """
        if self._me is None:
            try:
                user = await self._client().get_me()
            except TelegramError as exc:
                raise outbound.translate(exc) from exc
            self._me = BotIdentity(user.id, user.username or "")
        return self._me

    def describe(self) -> Mapping[str, Any]:
        facts = dict(super().describe())
        if self._me is not None:
            facts["username"] = f"@{self._me.username}"
        return facts

    # -- edge -----------------------------------------------------------------------------------

    async def verify(self, request: InboundRequest) -> None:
        check_secret(request.headers, self.config.webhook_secret.reveal())

    async def parse(self, request: InboundRequest) -> ParsedRequest:
        update = read_update(request.body)
        if update is None:
            return ParsedRequest()
        change = membership_change(update, self.name)
        if change is not None:
            await self._record_membership(change)
            return ParsedRequest()
        me = await self.identity() if needs_identity(update) else self._me
        inbound = to_inbound(update, channel=self.name, config=self.config, me=me, received_at=request.received_at)
        if inbound is None:
            return ParsedRequest()
        if update.callback_query is not None:
            await self._answer_button(update.callback_query)
        return ParsedRequest(inbounds=(inbound,))

    async def _record_membership(self, change: MembershipChange) -> None:
        """Blocked/kicked: mark the conversation gone so workers stop sending; back: unmark."""
        key = self.services.keys.conversation(change.key)
        try:
            if change.gone:
                await self.services.redis.hset(key, "gone", "1")
            else:
                await self.services.redis.hdel(key, "gone")
        except RedisError as exc:
            # Not acknowledged, so Telegram delivers the update again (PROTOCOLS §1.3).
            raise StoreUnavailable(f"cannot record membership of {change.key}") from exc
        log.info("telegram %s: bot %s", change.key, "removed or blocked" if change.gone else "let back in")

    async def _answer_button(self, query: CallbackQuery) -> None:
        # Until answered the button shows a spinner (PROTOCOLS §1.5); best effort, quick.
        try:
            await self._client().answer_callback_query(query.id, read_timeout=2.0)
        except TelegramError as exc:
            log.debug("telegram answerCallbackQuery failed: %s", exc.message)

    # -- workers --------------------------------------------------------------------------------

    def render(self, reply: Reply) -> list[Outgoing]:
        parts = [
            Outgoing(text=chunk.html, plain=chunk.plain, hints={"parse_mode": "HTML"})
            for chunk in render_markdown(reply.text)
        ]
        parts.extend(Outgoing(attachment=attachment) for attachment in reply.attachments)
        return parts

    async def send(self, route: Route, outgoing: Outgoing) -> str:
        if not route.get("chat_id"):
            raise DeliveryRejected("the route has no Telegram chat_id")
        bot = self._client()
        await outbound.pace(self.services.redis, self.services.keys, self.name, route["chat_id"])
        try:
            if outgoing.attachment is None:
                return await outbound.send_text(bot, route, outgoing)
            return await self._send_attachment(bot, route, outgoing.attachment)
        except TelegramError as exc:
            raise outbound.translate(exc) from exc

    async def _send_attachment(self, bot: Bot, route: Route, attachment: ReplyAttachment) -> str:
        if attachment.size > outbound.UPLOAD_LIMIT_BYTES:
            return await outbound.send_link(bot, route, attachment)
        if self.services.fetch_ocs_file is None:
            raise DeliveryRejected("no OCS file fetcher configured for reply attachments")
        data = await self.services.fetch_ocs_file(attachment)
        if len(data) > outbound.UPLOAD_LIMIT_BYTES:  # OCS under-reported the size
            return await outbound.send_link(bot, route, attachment)
        return await outbound.send_file(bot, route, attachment, data)

    async def download(self, attachment: Attachment, route: Route) -> InboundFile:
        return await files.download(self._client(), attachment)

    async def show_working(self, route: Route) -> None:
        await outbound.send_typing(self._client(), route)
