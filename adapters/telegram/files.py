"""Fetching a user's file from Telegram: getFile, then a GET of the file path.

The cloud Bot API serves files up to 20 MiB and answers "file is too big" beyond that
(docs/PLATFORMS.md §1.5, ``MAX_DOWNLOAD_FILE_SIZE = 20 << 20``). We check the size the update told us
before asking, and again from getFile, so an oversized file costs no call and no bytes.
"""

from __future__ import annotations

from telegram import Bot
from telegram.error import BadRequest, TelegramError

from adapters.telegram.outbound import translate
from gateway.core.channel import InboundFile
from gateway.core.errors import AttachmentUnavailable, RetryLater
from gateway.core.models import Attachment

__all__ = ["DOWNLOAD_LIMIT_BYTES", "download"]

#: The Bot API's download limit (20 MiB, docs/PLATFORMS.md §1.5).
DOWNLOAD_LIMIT_BYTES = 20 * 1024 * 1024


async def download(bot: Bot, attachment: Attachment, *, max_bytes: int | None = None) -> InboundFile:
    """Download the file behind ``attachment.ref`` (a Telegram file_id), at most 20 MiB or
    ``max_bytes`` if lower (checked against the sizes Telegram states, before any byte moves).

    Raises:
        AttachmentUnavailable: too large, or Telegram does not know the file.
        RetryLater: Telegram is unreachable or rate limiting.
    """
    limit = DOWNLOAD_LIMIT_BYTES if max_bytes is None else min(max_bytes, DOWNLOAD_LIMIT_BYTES)
    _check_size(attachment.size, attachment.name, limit)
    try:
        file = await bot.get_file(attachment.ref)
        _check_size(file.file_size, attachment.name, limit)
        data = bytes(await file.download_as_bytearray())
    except BadRequest as exc:
        raise AttachmentUnavailable(f"telegram: {exc.message}") from exc
    except TelegramError as exc:
        error = translate(exc)
        if isinstance(error, RetryLater):
            raise error from exc
        raise AttachmentUnavailable(f"telegram: {exc.message}") from exc
    _check_size(len(data), attachment.name, limit)
    return InboundFile(name=attachment.name, content_type=attachment.content_type, data=data)


def _check_size(size: int | None, name: str, limit: int) -> None:
    if size is not None and size > limit:
        why = "Telegram bots can download at most 20 MiB" if limit == DOWNLOAD_LIMIT_BYTES else f"the limit is {limit} bytes"
        raise AttachmentUnavailable(f"{name} is {size / (1024 * 1024):.1f} MiB; {why}")
