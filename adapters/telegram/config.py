"""The settings of a Telegram channel (``type: telegram``; docs/TELEGRAM.md). No SDK here: the
configuration loads without python-telegram-bot."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gateway.core.config import ChannelConfig, HttpUrl, SecretRef

__all__ = ["TelegramChannelConfig"]


class TelegramChannelConfig(ChannelConfig):
    """One Telegram bot (token from BotFather): updates by webhook (with its secret) or by long
    polling (``mode: polling``, no public URL needed; docs/TELEGRAM.md)."""

    type: Literal["telegram"]
    token: SecretRef
    #: ``webhook``: Telegram POSTs to ``public_url``; ``polling``: the web process asks with
    #: getUpdates (one poller per bot across replicas). Telegram allows one or the other.
    mode: Literal["webhook", "polling"] = "webhook"
    #: OCS's progress lines as a message draft in private chats (docs/TELEGRAM.md, "Progress");
    #: off, or in groups, "typing…" only.
    show_progress: bool = True
    #: Required in webhook mode (Telegram sends it on every POST); unused when polling.
    webhook_secret: SecretRef | None = None
    #: Groups: one conversation per chat, or per speaker inside the chat.
    group_conversation: Literal["per_chat", "per_speaker"] = "per_chat"
    #: Groups: answer only when mentioned/replied to/commanded, or answer everything.
    group_answer: Literal["mentions", "all"] = "mentions"
    #: Where the Bot API lives (a local Bot API server, or a fake in tests).
    api_base_url: HttpUrl = "https://api.telegram.org"
    allowed_updates: tuple[str, ...] = ("message", "my_chat_member", "callback_query")
    ignore_other_bots: bool = True
    #: ``/start <payload>`` deep links: the payload reaches OCS as the message text, as
    #: ``context.start_payload`` (the text stays "/start"), or both.
    start_payload: Literal["text", "context", "both"] = "context"
    #: Send spacing (Telegram's flood limits, docs/PLATFORMS.md §1.5): ~1/s in a private chat, at most
    #: ~20 a minute in a group, ~30/s for the whole bot.
    private_interval_s: float = Field(default=1.0, gt=0)
    group_interval_s: float = Field(default=3.0, gt=0)
    bot_interval_s: float = Field(default=1 / 25, gt=0)
    #: Polling: how long one getUpdates waits for news, and the poller lease's life (a replica
    #: takes over this long after the poller's process died).
    poll_timeout_s: int = Field(default=25, ge=0, le=50)
    poll_lease_ttl_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _secret_for_webhook(self) -> TelegramChannelConfig:
        if self.mode == "webhook" and self.webhook_secret is None:
            raise ValueError("telegram webhook mode needs webhook_secret (or set mode: polling)")
        return self
