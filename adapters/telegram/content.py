"""What a Telegram message says, as text plus files: the media half of parsing.

OCS takes text and files, so every message kind becomes one of those: a photo, document or video
is a file (downloaded later by ``files.py``) with its caption as the text; a voice note, an audio
file or a round video note is speech (``Attachment.voice``: the engine transcribes it, docs/VOICE.md),
with only its caption as text;
stickers, locations, contacts and polls, which OCS cannot take as files, become a short readable
line like ``[location: 51.5, -0.12]`` so the bot can still answer something sensible.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import timedelta

from telegram import Audio, Message, VideoNote, Voice

from gateway.core.models import Attachment

__all__ = ["Content", "message_content"]


@dataclass(frozen=True, slots=True)
class Content:
    """The words and files of one message; both empty for service messages (joins, pins...)."""

    text: str = ""
    attachments: tuple[Attachment, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.text.strip() and not self.attachments


def message_content(message: Message) -> Content:
    """Text (or caption) and files of ``message``; a placeholder stands in for captionless media
    other than speech, whose words will be its text."""
    attachment, placeholder = _media(message)
    text = message.text or message.caption or ""
    if attachment is not None:
        return Content(text or placeholder, (attachment,))
    if text:
        return Content(text)
    return Content(placeholder)


def _media(message: Message) -> tuple[Attachment | None, str]:
    """The message's file, if any, and the text that describes it when there is no caption."""
    if message.photo:
        # Telegram sends several sizes of one photo, smallest first (PTB keeps the order).
        largest = max(message.photo, key=lambda size: (size.file_size or 0, size.width * size.height))
        name = f"photo_{largest.file_unique_id}.jpg"  # Telegram re-encodes every photo as JPEG
        return Attachment(largest.file_id, name, "image/jpeg", largest.file_size), "[photo]"
    if message.document:
        doc = message.document
        name = doc.file_name or f"document_{doc.file_unique_id}"
        mime = doc.mime_type or "application/octet-stream"
        return Attachment(doc.file_id, name, mime, doc.file_size), f"[file: {name}]"
    if message.voice:
        voice = message.voice
        mime = voice.mime_type or "audio/ogg"
        name = f"voice_{voice.file_unique_id}.ogg"
        return Attachment(voice.file_id, name, mime, voice.file_size, voice=True, duration_s=_seconds(voice)), ""
    if message.audio:
        audio = message.audio
        name = audio.file_name or f"audio_{audio.file_unique_id}"
        mime = audio.mime_type or "audio/mpeg"
        return Attachment(audio.file_id, name, mime, audio.file_size, voice=True, duration_s=_seconds(audio)), ""
    if message.video:
        video = message.video
        name = video.file_name or f"video_{video.file_unique_id}.mp4"
        mime = video.mime_type or "video/mp4"
        return Attachment(video.file_id, name, mime, video.file_size), "[video]"
    if message.video_note:
        note = message.video_note
        name = f"video_note_{note.file_unique_id}.mp4"
        # Its sound is what the user said: heard like a voice note, the picture left out.
        return Attachment(note.file_id, name, "video/mp4", note.file_size, voice=True, duration_s=_seconds(note)), ""
    return None, _placeholder(message)


def _seconds(media: Voice | Audio | VideoNote) -> float | None:
    """The recording's length as Telegram gave it (whole seconds; 0 when it did not say), or None."""
    # PTB 22 returns an int or a timedelta depending on PTB_TIMEDELTA and warns about the change.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        duration: object = media.duration
    if isinstance(duration, timedelta):
        return duration.total_seconds() or None
    return float(duration) if isinstance(duration, (int, float)) and duration > 0 else None


def _placeholder(message: Message) -> str:
    """A readable line for content OCS cannot take as a file; "" for service messages."""
    if message.sticker:
        emoji = message.sticker.emoji
        return f"[sticker {emoji}]" if emoji else "[sticker]"
    if message.venue:
        return f"[venue: {message.venue.title}, {message.venue.address}]"
    if message.location:
        return f"[location: {message.location.latitude:.6f}, {message.location.longitude:.6f}]"
    if message.contact:
        contact = message.contact
        name = " ".join(part for part in (contact.first_name, contact.last_name) if part)
        return f"[contact: {name}, {contact.phone_number}]"
    if message.poll:
        return f"[poll: {message.poll.question}]"
    if message.dice:
        return f"[dice {message.dice.emoji}: {message.dice.value}]"
    if message.animation:
        return "[animation]"
    return ""
