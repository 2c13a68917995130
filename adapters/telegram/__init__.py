"""The Telegram channel: python-telegram-bot behind ``gateway.core.channel.ChannelAdapter``.

Modules, one concept each: ``inbound`` (secret check, update → Inbound, conversation keys),
``addressing`` (commands, mentions, replies: group gating), ``content`` (media → text and files), ``markup``/``format`` (Markdown →
Telegram HTML chunks), ``outbound`` (send, pacing, PTB → gateway errors), ``files`` (getFile
downloads), ``cli`` (set-webhook / webhook-info) and ``adapter`` (the class tying them together).
"""

from __future__ import annotations

from adapters.telegram.adapter import TelegramAdapter

__all__ = ["TelegramAdapter"]
