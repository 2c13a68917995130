"""Answers back as voice (docs/VOICE.md): where the bot's ``speech.voice_replies`` says so, the
answer's words also go out as a voice note, one more part after the written ones.

The part is rendered with the rest when the answer is recorded (``voice_reply_parts``, from
``workers/closing.py``) and holds only the words to speak, so delivery's mark-before-post covers
it like any part (``workers/delivery.py``). Its audio is made when delivery reaches it, after the
written answer is out (a slow speech service never delays the words), and kept under the part's
delivery id (``voice:{part}``) until it is posted, so a retry of the platform call does not
speak it again. Whether
the user spoke is read from the turn's own message (its attachments), so ``reciprocal`` holds
after a crash without any state of its own. A voice reply never replaces the words: when the
speech service or the platform cannot make or take it, after a few tries it is left out and the
turn ends as it would have without it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Literal

from markdown_it import MarkdownIt
from markdown_it.token import Token

from gateway.core.channel import VoiceNote
from gateway.core.errors import DeliveryRejected, RetryLater, SpeechAuthFailed, SpeechRejected, SpeechUnavailable
from gateway.core.models import ConversationKey, Delivery, Outgoing, Reply, ReplyKind
from gateway.speech.audio import AudioUnreadable, VoiceFormat, probe, transcode
from gateway.store.ledger import Turn
from workers.context import WorkerServices

__all__ = ["VOICE_AUDIO_TTL_S", "VOICE_HINT", "VoiceReplies", "speakable", "user_spoke", "voice_reply_parts"]

log = logging.getLogger("ocsgw.turns")

#: The ``Outgoing.hints`` key of a voice-reply part; its value is the format (``ogg``/``mp3``).
VOICE_HINT = "voice"
#: How long a spoken part's audio is kept for its retries (longer than delivery's default budget).
VOICE_AUDIO_TTL_S = 2 * 3600
#: Tries of a failing speech service for one voice reply before it is left out.
_TRIES = 3
#: What ``/audio/speech`` is asked for, per voice format.
_REQUEST: dict[VoiceFormat, Literal["opus", "mp3"]] = {"ogg": "opus", "mp3": "mp3"}

_MARKDOWN = MarkdownIt("commonmark")
_SENTENCE_END = re.compile(r"[.!?…](?=\s)|\n")


def user_spoke(turn: Turn) -> bool:
    """Whether the turn's message was (or held) speech: what ``reciprocal`` answers in voice."""
    return any(attachment.spoken for inbound in turn.inbounds for attachment in inbound.attachments)


def voice_reply_parts(services: WorkerServices, conv: ConversationKey, turn: Turn, reply: Reply) -> tuple[Outgoing, ...]:
    """The voice-reply part to add after ``reply``'s written parts, or none: the bot's speech
    says ``always``, or ``reciprocal`` and the user spoke; the channel plays voice notes; the
    reply is the bot's (not the gateway's own notice) and has words to speak."""
    bot = services.config.bot_for(conv.channel)
    speech = bot.speech
    voice_format = services.adapters[conv.channel].voice_format
    if speech is None or speech.voice_replies == "off" or voice_format not in _REQUEST:
        return ()
    if reply.kind is ReplyKind.NOTICE:
        return ()
    if speech.voice_replies == "reciprocal" and not (reply.kind is ReplyKind.ANSWER and user_spoke(turn)):
        return ()
    words = speakable(reply.text, max_chars=speech.max_speech_chars)
    if not words:
        return ()
    return (Outgoing(plain=words, hints={VOICE_HINT: voice_format, "in_reply_to": reply.in_reply_to or ""}),)


def speakable(markdown: str, *, max_chars: int = 4096) -> str:
    """The words of a Markdown answer as they are read aloud: no markup, no link targets, no code
    blocks (nobody listens to code); at most ``max_chars``, cut after a sentence where one ends."""
    lines: list[str] = []
    current: list[str] = []
    for token in _MARKDOWN.parse(markdown):
        if token.type == "inline":
            current.append(_inline_words(token.children or []))
        elif token.type.endswith("_close") and token.type in ("paragraph_close", "heading_close"):
            lines.append("".join(current).strip())
            current = []
    lines.append("".join(current).strip())
    text = "\n".join(line for line in lines if line)
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    ends = [m.end() for m in _SENTENCE_END.finditer(cut)]
    if ends and ends[-1] > max_chars // 2:
        return cut[: ends[-1]].strip()
    return cut.rsplit(" ", 1)[0].strip() if " " in cut else cut


def _inline_words(children: list[Token]) -> str:
    words: list[str] = []
    for child in children:
        if child.type in ("text", "code_inline"):
            words.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            words.append(" ")
        elif child.type == "image":
            words.append(child.content)  # its alt text
    return "".join(words)


class VoiceReplies:
    """Speaks a voice-reply part and posts it (``workers/delivery.py`` calls ``send``)."""

    def __init__(self, services: WorkerServices) -> None:
        self.services = services

    async def send(
        self, conv: ConversationKey, turn: Turn, part: Outgoing, delivery: Delivery,
        post: Callable[[VoiceNote], Awaitable[str]],
    ) -> str:
        """Speak ``part`` (or take the audio kept from an earlier try) and ``post`` it; the
        platform's id, or "" when it was left out.

        Raises:
            RetryLater: the speech service failed this try (it asked to wait, or is down), and
                tries remain; delivery waits and tries the part again.
            PacingWait, RetryLater, RecipientGone: from ``post``, as for any part.
        """
        services = self.services
        bot = services.config.channels[conv.channel].bot
        counted = services.metrics.voice_replies
        client = services.speech_for(conv.channel)
        voice_format: VoiceFormat = "mp3" if part.hints.get(VOICE_HINT) == "mp3" else "ogg"
        if client is None:
            log.info("voice reply left out: the bot has no speech service any more")
            return ""
        key = services.keys.voice_audio(delivery.id)
        kept = await services.redis.get(key)
        if kept is not None:
            audio = kept if isinstance(kept, bytes) else kept.encode("latin-1")
        else:
            try:
                spoken = await client.synthesize(part.plain, response_format=_REQUEST[voice_format])
            except SpeechUnavailable as exc:
                counted.labels(bot, "rate_limited" if exc.rate_limited else "unavailable").inc()
                if turn.attempts + 1 < _TRIES:
                    raise RetryLater(exc.retry_after_s, f"speech service: {exc.reason}", rate_limited=exc.rate_limited) from exc
                log.warning("voice reply left out after %d tries: %s", _TRIES, exc)
                return ""
            except (SpeechAuthFailed, SpeechRejected) as exc:
                counted.labels(bot, "auth_failed" if isinstance(exc, SpeechAuthFailed) else "rejected").inc()
                log.warning("voice reply left out: %s", exc)
                return ""
            try:
                audio = await asyncio.to_thread(_in_format, spoken, voice_format)
            except AudioUnreadable as exc:
                counted.labels(bot, "rejected").inc()
                log.warning("voice reply left out: the speech service's answer is %s", exc)
                return ""
            await services.redis.set(key, audio, ex=VOICE_AUDIO_TTL_S)
        duration = (await asyncio.to_thread(probe, audio)).duration_s
        note = VoiceNote(
            data=audio, content_type="audio/mpeg" if voice_format == "mp3" else "audio/ogg",
            name=f"answer.{voice_format}", duration_s=duration,
            in_reply_to=part.hints.get("in_reply_to") or None,
        )
        try:
            platform_id = await post(note)
        except DeliveryRejected as exc:
            # A user who takes no voice notes from bots, a format refused: the words are out.
            counted.labels(bot, "undeliverable").inc()
            log.warning("voice reply left out: the platform refused it: %s", exc.reason)
            return ""
        counted.labels(bot, "ok").inc()
        services.metrics.audio_seconds.labels(bot, "out").inc(duration)
        # Posted: only a crash before the part's record could want it again (and would speak it
        # anew), so Redis holds no audio longer than its part is in flight.
        await services.redis.delete(key)
        return platform_id


def _in_format(audio: bytes, voice_format: VoiceFormat) -> bytes:
    """The speech service's audio as ``voice_format``: as it came when it already is (asked for,
    and a server that honours ``response_format`` sends it), else converted."""
    info = probe(audio)
    if voice_format == "ogg" and (info.container, info.codec) in (("ogg", "opus"), ("ogg", "libopus")):
        return audio
    if voice_format == "mp3" and info.container == "mp3":
        return audio
    return transcode(audio, voice_format)[0]
