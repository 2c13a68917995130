"""Sending to WhatsApp: message bodies for ``POST /{phone-number-id}/messages``, paced in Redis.

Two limits are Meta's (docs/WHATSAPP.md, "Errors and limits"): the number's throughput (80
messages/s by default; error 130429) and the pair rate to one user (bursts pass, but about one
message every 6 s on average; error 131056). Both are paced with ``gateway.store.pacing.take_send``
across every worker: the user's key at ``pair_interval_s``, the number's sends at
``messages_per_second`` in any sliding second. When Meta still says a limit was hit, the key it
names is pushed out (``hold``) so every worker's next send there waits too, and the send is
retried after that wait.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import redis.asyncio as aioredis

from adapters.whatsapp.keys import WhatsAppKeys
from gateway.core.errors import PacingWait
from gateway.store.pacing import Clearance, reserve_slot, take_send

__all__ = [
    "MAX_PACING_SLEEP_S",
    "TEMPLATE_TEXT_CHARS",
    "hold_number",
    "hold_user",
    "media_body",
    "pace",
    "read_body",
    "template_body",
    "template_text",
    "text_body",
]

#: A pacing wait up to this (in all, for one send) is slept; a longer one goes back to the
#: queue (``PacingWait``), holding no thread and booking nothing.
MAX_PACING_SLEEP_S = 1.5
#: A template's body parameter is kept to this many characters: the approved body with it must
#: stay within the 1,024 characters of a template body.
TEMPLATE_TEXT_CHARS = 900
_URL = re.compile(r"https?://")
_SPACES = re.compile(r" {4,}")
_BREAKS = re.compile(r"[\r\n\t]+")


async def pace(
    redis: aioredis.Redis, keys: WhatsAppKeys, channel: str, wa_id: str, *, pair_interval_s: float, per_second: float
) -> None:
    """Wait for this user's and this number's next send slot, then take the send.

    Raises:
        PacingWait: the wait is long; nothing was booked.
    """
    user_key = keys.user_pace(channel, wa_id)
    chat = (user_key, pair_interval_s)
    number = (keys.number_pace(channel), keys.number_sends(channel), 1.0 / per_second)
    slot = await take_send(redis, chat=chat, bot=number, max_wait_s=MAX_PACING_SLEEP_S)
    slept = 0.0
    while slot.clearance is not Clearance.SEND:
        if slot.clearance is Clearance.REFUSED or slept + slot.wait_s > MAX_PACING_SLEEP_S:
            raise PacingWait(slot.wait_s, "pacing sends to stay under WhatsApp's pair rate and throughput")
        await asyncio.sleep(slot.wait_s)
        slept += slot.wait_s
        slot = await take_send(redis, chat=chat, bot=number, max_wait_s=MAX_PACING_SLEEP_S, holding=True)


async def hold_user(redis: aioredis.Redis, keys: WhatsAppKeys, channel: str, wa_id: str, wait_s: float) -> None:
    """After a 131056: no worker sends to this user for ``wait_s``."""
    await reserve_slot(redis, keys.user_pace(channel, wa_id), wait_s)


async def hold_number(redis: aioredis.Redis, keys: WhatsAppKeys, channel: str, wait_s: float) -> None:
    """After a 130429: no worker sends from this number for ``wait_s``."""
    await reserve_slot(redis, keys.number_pace(channel), wait_s)


def _envelope(to: str, kind: str, reply_to: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": kind}
    if reply_to:
        body["context"] = {"message_id": reply_to}
    return body


def text_body(to: str, text: str, *, reply_to: str | None = None) -> dict[str, Any]:
    """A text message; a link in it gets WhatsApp's preview."""
    body = _envelope(to, "text", reply_to)
    body["text"] = {"body": text, "preview_url": bool(_URL.search(text))}
    return body


def media_body(
    to: str, kind: str, *, media_id: str | None = None, link: str | None = None, filename: str | None = None,
    caption: str | None = None, reply_to: str | None = None,
) -> dict[str, Any]:
    """An image, video, audio or document message, by uploaded media id or by link."""
    media: dict[str, Any] = {"id": media_id} if media_id else {"link": link}
    if kind == "document" and filename:
        media["filename"] = filename
    if caption and kind in ("image", "video", "document"):
        media["caption"] = caption
    body = _envelope(to, kind, reply_to)
    body[kind] = media
    return body


def template_text(text: str) -> str:
    """A text as a template parameter: Meta refuses one with line breaks, tabs or more than
    four spaces in a row (error 132018), and a long one (``TEMPLATE_TEXT_CHARS``)."""
    flat = _SPACES.sub("   ", _BREAKS.sub(" ", text)).strip()
    return flat[:TEMPLATE_TEXT_CHARS] or "…"


def template_body(to: str, *, name: str, language: str, text: str) -> dict[str, Any]:
    """The approved template ``name`` with ``text`` as its one body parameter (``{{1}}``)."""
    body = _envelope(to, "template", None)
    body["template"] = {
        "name": name,
        "language": {"code": language},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": template_text(text)}]}],
    }
    return body


def read_body(message_id: str, *, typing: bool) -> dict[str, Any]:
    """Mark the user's message read, with "typing…" for up to 25 s (or until we answer)."""
    body: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read", "message_id": message_id}
    if typing:
        body["typing_indicator"] = {"type": "text"}
    return body
