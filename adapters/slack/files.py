"""Files both ways: the user's files from Slack to OCS, the bot's attachments from OCS to Slack.

Downloads: ``url_private_download`` needs the bot token as a Bearer header (docs/PLATFORMS.md §2.5). With a wrong or
missing token Slack does not answer 401: it answers **200 with its HTML sign-in page**, which a
naive client would hand to OCS as the "file". We refuse an HTML body unless the file says it is
HTML. The token is sent only to Slack's file host (or the configured API host, for tests and
proxies), never to a URL some payload made up.

Uploads use the external upload flow (``files.getUploadURLExternal`` → POST the bytes →
``files.completeUploadExternal`` into the thread), which slack_sdk's ``files_upload_v2`` runs;
``files.upload`` is being retired.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.api import slack_errors
from gateway.core.channel import InboundFile
from gateway.core.errors import AttachmentUnavailable, RetryLater
from gateway.core.models import Attachment, ReplyAttachment, Route

__all__ = ["MAX_DOWNLOAD_BYTES", "MAX_UPLOAD_BYTES", "download_file", "upload_bytes", "upload_file"]

#: A user's file larger than this is not fetched (OCS would refuse it anyway).
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
#: A reply attachment larger than this is posted as a link instead of uploaded.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024

_SLACK_FILE_HOSTS = frozenset({"files.slack.com"})


def _allowed(url: str, api_base_url: str) -> bool:
    parts = urlsplit(url)
    api = urlsplit(api_base_url)
    if parts.hostname in _SLACK_FILE_HOSTS and parts.scheme == "https":
        return True
    return (parts.scheme, parts.netloc) == (api.scheme, api.netloc)


async def download_file(
    http: httpx.AsyncClient, attachment: Attachment, *, token: str, api_base_url: str, max_bytes: int | None = None
) -> InboundFile:
    """Fetch a user's file with the bot token: at most ``MAX_DOWNLOAD_BYTES``, or ``max_bytes``
    if lower (refused by the event's size before any byte moves, else cut off while it streams).

    Raises:
        AttachmentUnavailable: too large, gone, refused, not on Slack's host, or a sign-in page.
        RetryLater: Slack is failing or rate limiting for now.
    """
    if not _allowed(attachment.ref, api_base_url):
        raise AttachmentUnavailable("the file URL is not on Slack's file host; the bot token stays home")
    limit = MAX_DOWNLOAD_BYTES if max_bytes is None else min(max_bytes, MAX_DOWNLOAD_BYTES)
    if attachment.size is not None and attachment.size > limit:
        raise AttachmentUnavailable(f"the file is larger than {limit} bytes")
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with http.stream("GET", attachment.ref, headers=headers, follow_redirects=True) as response:
            if response.status_code == 429 or response.status_code >= 500:
                retry_after = response.headers.get("retry-after", "")
                wait_s = float(retry_after) if retry_after.isdigit() else 5.0
                raise RetryLater(wait_s, f"file download HTTP {response.status_code}")
            if response.status_code != 200:
                raise AttachmentUnavailable(f"Slack answered HTTP {response.status_code} for the file")
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type == "text/html" and not attachment.content_type.startswith("text/html"):
                raise AttachmentUnavailable("Slack sent its sign-in page instead of the file (token refused?)")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data.extend(chunk)
                if len(data) > limit:
                    raise AttachmentUnavailable(f"the file is larger than {limit} bytes")
    except httpx.HTTPError as exc:
        raise RetryLater(5.0, f"file download: {type(exc).__name__}") from exc
    return InboundFile(name=attachment.name, content_type=attachment.content_type, data=bytes(data))


async def upload_file(client: AsyncWebClient, *, token: str, route: Route, attachment: ReplyAttachment, data: bytes) -> str:
    """Upload one reply attachment into the conversation's thread; returns the Slack file id.

    Raises:
        RetryLater / RecipientGone / DeliveryRejected: as ``slack_errors`` maps them.
    """
    return await upload_bytes(client, token=token, route=route, filename=attachment.name, title=attachment.name, data=data)


async def upload_bytes(client: AsyncWebClient, *, token: str, route: Route, filename: str, title: str, data: bytes) -> str:
    """Upload ``data`` as ``filename`` into the conversation's thread; returns the Slack file id.

    Raises:
        RetryLater / RecipientGone / DeliveryRejected: as ``slack_errors`` maps them.
    """
    with slack_errors("files_upload_v2"):
        response = await client.files_upload_v2(
            token=token,
            channel=route["channel"],
            thread_ts=route.get("thread_ts") or None,
            filename=filename,
            title=title,
            content=data,
        )
    file = response.get("file") or {}
    return str(file.get("id") or "") if isinstance(file, dict) else ""
