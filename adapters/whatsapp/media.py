"""Files both ways: a user's media from Meta to OCS, the bot's attachments from OCS to WhatsApp.

Downloads take two steps (docs/WHATSAPP.md, "Media"): ``GET /{media-id}`` answers a short-lived
``url`` (on Meta's CDN, ``lookaside.fbsbx.com``) with the file's ``mime_type`` and
``file_size``; a ``GET`` of that URL with the access token returns the bytes. The URL comes from
an answer we did not write, so it is fetched through the SSRF guard (``gateway.core.fetching``:
no internal address, redirects checked hop by hop, the size capped while it streams), and the
token goes only to the Graph API's own origin and the configured ``media_hosts``, over https:
any other host (a redirect included) is asked without it.

Uploads go to ``POST /{phone-number-id}/media`` (multipart: ``file``, ``type``,
``messaging_product``) and answer a media id the message then names.
"""

from __future__ import annotations

from collections.abc import Iterable

from adapters.whatsapp.graph import GraphClient
from gateway.core.channel import InboundFile
from gateway.core.errors import AttachmentUnavailable, DeliveryRejected, RecipientGone, RetryLater
from gateway.core.fetching import DEFAULT_MAX_BYTES, Credentials, fetch_url
from gateway.core.models import Attachment

__all__ = ["MAX_DOWNLOAD_BYTES", "download", "media_kind", "upload"]

#: OCS takes files up to 50 MB (docs/OCS.md §3.3); WhatsApp's largest (documents) are 100 MB.
MAX_DOWNLOAD_BYTES = DEFAULT_MAX_BYTES

#: What WhatsApp shows inline, with its size limits (bytes); anything else goes as a document.
_INLINE = {
    "image": (frozenset({"image/jpeg", "image/png"}), 5 * 1024 * 1024),
    "video": (frozenset({"video/mp4", "video/3gpp"}), 16 * 1024 * 1024),
    "audio": (frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}), 16 * 1024 * 1024),
}
_DOCUMENT_LIMIT = 100 * 1024 * 1024


def media_kind(content_type: str, size: int) -> str | None:
    """The message type a file of this type and size goes as; None: too big for WhatsApp."""
    bare = content_type.split(";")[0].strip().lower()
    for kind, (types, limit) in _INLINE.items():
        if bare in types and size <= limit:
            return kind
    return "document" if size <= _DOCUMENT_LIMIT else None


async def download(
    graph: GraphClient,
    attachment: Attachment,
    *,
    media_hosts: Iterable[str],
    fetch_allowlist: Iterable[str],
    max_bytes: int | None = None,
) -> InboundFile:
    """The bytes of the user's media ``attachment.ref`` (a media id), at most 50 MB or
    ``max_bytes`` if lower: refused by the size Meta states before any byte moves, else cut off
    while it streams.

    Raises:
        AttachmentUnavailable: too large, gone (media URLs expire after 5 minutes, media ids
            after 30 days), refused by the SSRF guard, or not a file.
        RetryLater: the Graph API is failing or rate limiting for now.
    """
    limit = MAX_DOWNLOAD_BYTES if max_bytes is None else min(max_bytes, MAX_DOWNLOAD_BYTES)
    if not attachment.ref.isdigit():
        raise AttachmentUnavailable("not a WhatsApp media id")
    try:
        info = await graph.call("GET", attachment.ref)
    except (DeliveryRejected, RecipientGone) as exc:
        raise AttachmentUnavailable(f"WhatsApp would not give the file: {exc}") from exc
    url = info.get("url")
    if not isinstance(url, str) or not url:
        raise AttachmentUnavailable("WhatsApp gave no URL for the file")
    size = info.get("file_size")
    if isinstance(size, int) and size > limit:
        raise AttachmentUnavailable(f"{attachment.name} is {size / (1024 * 1024):.1f} MiB; the limit is {limit} bytes")
    credentials = Credentials.for_origins(graph.auth, [graph.base_url, *(f"https://{host}" for host in media_hosts)])
    fetched = await fetch_url(url, allowlist=fetch_allowlist, max_bytes=limit, credentials=credentials)
    content_type = attachment.content_type
    if content_type == "application/octet-stream" and isinstance(info.get("mime_type"), str):
        content_type = str(info["mime_type"])
    return InboundFile(name=attachment.name, content_type=content_type, data=fetched.data)


async def upload(graph: GraphClient, phone_number_id: str, *, name: str, content_type: str, data: bytes) -> str:
    """Upload a file for one message; returns its media id.

    Raises:
        RetryLater / RecipientGone / DeliveryRejected: as ``graph.translate`` maps Meta's answer.
    """
    bare = content_type.split(";")[0].strip().lower() or "application/octet-stream"
    answer = await graph.call(
        "POST", f"{phone_number_id}/media",
        data={"messaging_product": "whatsapp", "type": bare},
        files={"file": (name, data, bare)},
        timeout_s=120.0,  # 100 MB on a modest uplink
    )
    media_id = answer.get("id")
    if not isinstance(media_id, str) or not media_id:
        raise RetryLater(5.0, "the media upload answered no id")
    return media_id
