"""``TelegramAdapter``: one Telegram bot behind the ``ChannelAdapter`` seam.

Each channel gets its own PTB ``Bot`` with its own connection pool and its own pacing keys, so
one bot's trouble (a revoked token, flood control, a slow API) never touches another. The Bot
is a private attribute, never a base class, so PTB's whole client API does not leak into the
adapter's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from telegram import Bot, CallbackQuery, Update
from telegram.error import ChatMigrated, TelegramError
from telegram.request import HTTPXRequest

from adapters.telegram import files, outbound
from adapters.telegram.config import TelegramChannelConfig
from adapters.telegram.drafts import Drafts
from adapters.telegram.format import render_markdown
from adapters.telegram.inbound import (
    BotIdentity,
    MembershipChange,
    check_secret,
    conversation_id,
    membership_change,
    needs_identity,
    read_update,
    to_inbound,
)
from adapters.telegram.migration import (
    ChatMigration,
    chat_migration,
    conversation_chat,
    current_chat,
    record_membership,
    record_migration,
)
from adapters.telegram.polling import Poller, PollerSettings, PollLease
from gateway.core.channel import (
    AdapterServices,
    Admit,
    ChannelAdapter,
    InboundFile,
    InboundRequest,
    VoiceNote,
)
from gateway.core.config import BotConfig
from gateway.core.errors import (
    AttachmentUnavailable,
    DeliveryError,
    DeliveryRejected,
    SignatureInvalid,
    StoreUnavailable,
)
from gateway.core.logs import conversation_label
from gateway.core.models import (
    Attachment,
    ConversationKey,
    Delivery,
    Inbound,
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
    """httpx logs every request URL at INFO, and Bot API URLs carry the token (docs/PLATFORMS.md §1.1)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "/bot" in message:
            record.msg, record.args = _TOKEN_IN_URL.sub(r"/\1bot<token>", message), None
        return True


if not any(isinstance(f, _RedactBotToken) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(_RedactBotToken())

#: Added to the long-poll timeout for getUpdates' read timeout (the answer's own trip).
_POLL_READ_MARGIN_S = 10.0


class TelegramAdapter(ChannelAdapter[TelegramChannelConfig]):
    """A Telegram bot: updates in by webhook or long polling, HTML messages, files and typing out."""

    kind = "telegram"
    inbound_path = "/telegram/{channel}"
    #: "typing…" lasts about 5 s (docs/PLATFORMS.md §1.5): refresh a little sooner.
    working_refresh_s = 4.0
    #: sendVoice plays OGG/Opus as a voice note (docs/PLATFORMS.md §1.5).
    voice_format = "ogg"

    def __init__(
        self, name: str, config: TelegramChannelConfig, bot: BotConfig, services: AdapterServices
    ) -> None:
        super().__init__(name, config, bot, services)
        self._request: HTTPXRequest | None = None
        self._bot: Bot | None = None
        self._me: BotIdentity | None = None
        self._drafts = Drafts(
            channel=name, redis=services.redis, keys=services.keys, bot_interval_s=config.bot_interval_s
        )

    # -- lifecycle ------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Build the Bot and learn who it is; a Bot API outage here only defers getMe."""
        self._client()
        try:
            await self.identity()
        except DeliveryError as exc:
            # Not fatal: one bot's outage or revoked token must not stop the other channels.
            log.warning("telegram channel %s: getMe failed at startup (%s); will retry on use", self.name, exc)

    async def listen(self, admit: Admit, stop: asyncio.Event) -> None:
        """Long polling (``mode: polling``, adapters/telegram/polling.py); webhook mode returns."""
        if self.config.mode != "polling":
            return
        settings = PollerSettings(
            channel=self.name,
            bot_id=self.config.token.reveal().split(":", 1)[0],  # the public part of the token
            timeout_s=self.config.poll_timeout_s,
            lease_ttl_s=self.config.poll_lease_ttl_s,
        )
        lease = PollLease(self.services.redis, self.services.keys, settings.bot_id, settings.lease_ttl_s)
        await Poller(settings, lease, fetch=self._get_updates, parse=self._parse_raw).run(admit, stop)

    async def _get_updates(self, offset: int | None, timeout_s: int) -> Sequence[Mapping[str, Any]]:
        params: dict[str, Any] = {"timeout": timeout_s, "allowed_updates": list(self.config.allowed_updates)}
        if offset is not None:
            params["offset"] = offset
        # Raw JSON through do_api_request, so each update takes the webhook's strict parse path
        # and one malformed update cannot fail its whole batch (Bot.get_updates parses all or
        # nothing). Spelled in lower case because Bot API method names are case-insensitive
        # (docs/PLATFORMS.md §1.1) and PTB warns when a known method goes through do_api_request.
        result = await self._client().do_api_request(
            "getupdates", api_kwargs=params, read_timeout=timeout_s + _POLL_READ_MARGIN_S
        )
        return [item for item in result if isinstance(item, dict)] if isinstance(result, list) else []

    async def _parse_raw(self, raw: Mapping[str, Any]) -> Sequence[Inbound]:
        # Through the webhook's own strict reader, so both modes accept and refuse alike.
        update = read_update(json.dumps(raw).encode())
        if update is None:
            return ()
        return (await self._parse_update(update, received_at=time.time())).inbounds

    async def aclose(self) -> None:
        if self._request is not None:
            await self._request.shutdown()
        self._request = self._bot = None

    def _client(self) -> Bot:
        if self._bot is None:
            base = self.config.api_base_url
            # One pool serves both of PTB's request slots: polling asks getUpdates through
            # do_api_request (the general slot) with its own read timeout; one connection of
            # the pool stays in the long poll.
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

    async def status(self) -> Mapping[str, Any]:
        """The webhook as Telegram has it (getWebhookInfo) against the one we expect: a URL that
        drifted (a redeploy under a new host), updates piling up, Telegram's last delivery error."""
        try:
            info = await self._client().get_webhook_info(read_timeout=5.0)
        except TelegramError as exc:
            return {"warnings": [f"getWebhookInfo failed: {outbound.translate(exc)}"]}
        polling = self.config.mode == "polling"
        public = self.services.config.public_url
        expected = "" if polling else (public + self.inbound_path.format(channel=self.name) if public else None)
        warnings: list[str] = []
        if expected is None:
            warnings.append("public_url is not set, so the webhook URL cannot be checked")
        elif info.url != expected:
            warnings.append(f"Telegram's webhook is {info.url or '(none)'}, expected {expected or '(none: polling)'}")
        if info.last_error_message:
            warnings.append(f"last delivery error: {info.last_error_message}")
        error_at = info.last_error_date
        return {
            "summary": ("polling" if polling else "webhook ok") if not warnings else "",
            "webhook_url": info.url or "",
            "expected_url": expected,
            "pending_update_count": info.pending_update_count,
            "last_error_message": info.last_error_message or "",
            "last_error_at": error_at.timestamp() if error_at is not None else None,
            "warnings": warnings,
        }

    # -- edge -----------------------------------------------------------------------------------

    async def verify(self, request: InboundRequest) -> None:
        if self.config.webhook_secret is None:
            # A polling channel: nothing legitimate POSTs here.
            raise SignatureInvalid(f"telegram channel {self.name} polls; it takes no webhook")
        check_secret(request.headers, self.config.webhook_secret.reveal())

    async def parse(self, request: InboundRequest) -> ParsedRequest:
        update = read_update(request.body)
        if update is None:
            return ParsedRequest()
        return await self._parse_update(update, received_at=request.received_at)

    async def _parse_update(self, update: Update, *, received_at: float) -> ParsedRequest:
        """One update, however it came (webhook or getUpdates), into the events for OCS."""
        migration = chat_migration(update)
        if migration is not None:
            await self._record_migration(migration, bot_in_chat=True)
            return ParsedRequest()
        chat = update.effective_chat
        alias = None
        if chat is not None and chat.type == "supergroup":  # only a supergroup continues a group
            alias = await conversation_chat(self.services.redis, self.services.keys, self.name, chat.id)
        change = membership_change(update, self.name, alias)
        if change is not None:
            group = chat.id if chat is not None and chat.type == "group" else None  # only basic groups migrate
            await self._record_membership(change, group)
            return ParsedRequest()
        me = await self.identity() if needs_identity(update) else self._me
        inbound = to_inbound(
            update, channel=self.name, config=self.config, me=me, received_at=received_at, conversation_chat=alias
        )
        if inbound is None:
            return ParsedRequest()
        if update.callback_query is not None:
            await self._answer_button(update.callback_query)
        return ParsedRequest(inbounds=(inbound,))

    async def _record_membership(self, change: MembershipChange, group_chat_id: int | None) -> None:
        """Blocked/kicked: mark the conversation gone so workers stop sending; back: unmark.

        A StoreUnavailable leaves the update unacknowledged, so Telegram delivers it again
        (docs/PLATFORMS.md §1.3).
        """
        # A private chat's key holds the user's id: logged as a label unless text may be logged.
        label = conversation_label(change.key, reveal=self.services.config.log_message_text)
        recorded = await record_membership(
            self.services.redis, self.services.keys, change.key, gone=change.gone, group_chat_id=group_chat_id
        )
        if not recorded:
            log.info("telegram %s: membership change in a group that became a supergroup (conversation %s); "
                     "ignored, the supergroup's own membership counts", self.name, label)
            return
        log.info("telegram %s: bot %s in conversation %s", self.name,
                 "removed or blocked" if change.gone else "let back in", label)

    async def _record_migration(self, migration: ChatMigration, *, bot_in_chat: bool = False) -> None:
        await record_migration(self.services.redis, self.services.keys, self.name, migration, bot_in_chat=bot_in_chat)
        reveal = self.services.config.log_message_text
        group = conversation_label(ConversationKey(self.name, conversation_id(migration.old_chat_id)), reveal=reveal)
        log.info(
            "telegram %s: a group became a supergroup%s; conversation %s follows it", self.name,
            f" ({migration.old_chat_id} -> {migration.new_chat_id})" if reveal else "", group,
        )

    async def _answer_button(self, query: CallbackQuery) -> None:
        # Until answered the button shows a spinner (docs/PLATFORMS.md §1.5); best effort, quick.
        try:
            await self._client().answer_callback_query(query.id, read_timeout=2.0)
        except TelegramError as exc:
            log.debug("telegram answerCallbackQuery failed: %s", exc.message)

    # -- workers --------------------------------------------------------------------------------

    def reply_route(self, routes: Sequence[Route]) -> Route:
        """A burst's answer replies to its last message (``reply_parameters``), so the user sees
        which of their messages it answers; a single message is answered as before (groups reply
        to it, private chats do not)."""
        last = routes[-1]
        if len(routes) > 1 and last.get("message_id") and not last.get("reply_to"):
            return {**last, "reply_to": last["message_id"]}
        return last

    def render(self, reply: Reply) -> list[Outgoing]:
        parts = [
            Outgoing(text=chunk.html, plain=chunk.plain, hints={"parse_mode": "HTML"})
            for chunk in render_markdown(reply.text)
        ]
        parts.extend(Outgoing(attachment=attachment) for attachment in reply.attachments)
        return parts

    async def send(self, route: Route, outgoing: Outgoing, delivery: Delivery | None = None) -> str:
        return await self._to_chat(route, lambda to: self._paced_send(to, outgoing))

    async def send_voice(self, route: Route, note: VoiceNote, delivery: Delivery | None = None) -> str:
        return await self._to_chat(route, lambda to: self._paced_voice(to, note))

    async def _to_chat(self, route: Route, post: Callable[[Route], Awaitable[str]]) -> str:
        """``post`` to the route's chat, or to the supergroup it became (PTB errors translated)."""
        if not route.get("chat_id"):
            raise DeliveryRejected("the route has no Telegram chat_id")
        if route.get("chat_type") == "group":  # only basic groups migrate
            moved = await current_chat(self.services.redis, self.services.keys, self.name, route["chat_id"])
            if moved != route["chat_id"]:
                route = {**route, "chat_id": moved, "chat_type": "supergroup"}
        try:
            return await post(route)
        except ChatMigrated as exc:
            # A reply in flight when the group migrated: follow it, and remember for the rest.
            new_chat_id = int(exc.new_chat_id)
            try:
                await self._record_migration(ChatMigration(int(route["chat_id"]), new_chat_id))
            except StoreUnavailable:
                log.warning("telegram %s: could not record a migration; sending on anyway", self.name)
            route = {**route, "chat_id": str(new_chat_id), "chat_type": "supergroup"}
            try:
                return await post(route)
            except TelegramError as again:
                raise outbound.translate(again) from again
        except TelegramError as exc:
            raise outbound.translate(exc) from exc

    async def _pace(self, route: Route) -> None:
        """Wait for the chat's and the bot's send slots."""
        interval = outbound.chat_interval(
            route.get("chat_type"), private_s=self.config.private_interval_s, group_s=self.config.group_interval_s
        )
        await outbound.pace(
            self.services.redis, self.services.keys, self.name, route["chat_id"],
            chat_interval_s=interval, bot_interval_s=self.config.bot_interval_s,
        )

    async def _paced_voice(self, route: Route, note: VoiceNote) -> str:
        await self._pace(route)
        return await outbound.send_voice(self._client(), route, note)

    async def _paced_send(self, route: Route, outgoing: Outgoing) -> str:
        """Wait for the chat's and the bot's slots, then send (PTB errors pass through)."""
        await self._pace(route)
        bot = self._client()
        if outgoing.attachment is None:
            return await outbound.send_text(bot, route, outgoing)
        return await self._send_attachment(bot, route, outgoing.attachment)

    async def _send_attachment(self, bot: Bot, route: Route, attachment: ReplyAttachment) -> str:
        if attachment.size > outbound.UPLOAD_LIMIT_BYTES:
            return await outbound.send_link(bot, route, attachment)
        if self.services.fetch_ocs_file is None:
            raise DeliveryRejected("no OCS file fetcher configured for reply attachments")
        try:
            data = await self.services.fetch_ocs_file(attachment)
        except AttachmentUnavailable as exc:
            log.warning("reply attachment %s not fetched, sending its link: %s", attachment.name, exc.reason)
            return await outbound.send_link(bot, route, attachment)
        if len(data) > outbound.UPLOAD_LIMIT_BYTES:  # OCS under-reported the size
            return await outbound.send_link(bot, route, attachment)
        return await outbound.send_file(bot, route, attachment, data)

    async def download(self, attachment: Attachment, route: Route, *, max_bytes: int | None = None) -> InboundFile:
        return await files.download(self._client(), attachment, max_bytes=max_bytes)

    async def show_working(self, route: Route) -> None:
        await outbound.send_typing(self._client(), route)

    async def show_progress(self, route: Route, text: str, turn_id: str) -> bool:
        """The line in the turn's message draft, in private chats (adapters/telegram/drafts.py)."""
        if not self.config.show_progress:
            return False
        return await self._drafts.show(self._client(), route, text, turn_id)
