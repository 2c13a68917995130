"""A webhook POST from Meta, read into what the gateway stores.

One POST carries ``entry[].changes[].value`` objects (field ``messages``); a value holds the
user's ``messages`` (with the sender's profile in ``contacts``) or ``statuses`` of messages we
sent, never a turn (docs/WHATSAPP.md, "Webhooks"). Messages addressed to another phone number of
the same Meta app (``metadata.phone_number_id``) are not this channel's and are skipped.

Every user message becomes one ``Inbound`` whose event id is its ``wamid``: Meta redelivers a
webhook for days until it gets a 200, and the edge's claim on the event id drops each repeat.
Message types: ``text``; ``image``, ``document``, ``audio`` (``voice: true`` for a voice note,
transcribed by the speech service like every spoken file), ``video``, ``sticker`` as files with
their caption as text; ``location`` and ``contacts`` as text; ``interactive`` button and list
replies and template quick-reply ``button`` presses as the title the user tapped. Reactions,
edits and what WhatsApp calls ``unsupported`` start nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core import safe_json
from gateway.core.errors import PayloadInvalid
from gateway.core.models import Attachment, ConversationKey, Inbound, InboundKind

__all__ = ["StatusUpdate", "WebhookContent", "read_webhook"]

#: Media message types and the name a file gets when WhatsApp gives none.
_MEDIA = {"image": "image", "document": "document", "audio": "audio", "video": "video", "sticker": "sticker"}
_EXTENSIONS = {
    "image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "audio/ogg": ".ogg", "audio/mpeg": ".mp3",
    "audio/mp4": ".m4a", "audio/aac": ".aac", "audio/amr": ".amr", "video/mp4": ".mp4", "video/3gpp": ".3gp",
    "application/pdf": ".pdf",
}


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """What Meta says about a message we sent: ``sent``, ``delivered``, ``read`` or ``failed``
    (with the error code and title of a failure)."""

    wamid: str
    status: str
    recipient_id: str
    timestamp: int
    error_code: int | None = None
    error_title: str = ""
    #: ``biz_opaque_callback_data`` as we sent it: the delivery id of the reply part.
    callback_data: str = ""


@dataclass(frozen=True, slots=True)
class WebhookContent:
    """The user messages of one POST (oldest first), the statuses, and when each user wrote."""

    inbounds: tuple[Inbound, ...] = ()
    statuses: tuple[StatusUpdate, ...] = ()
    #: wa_id → the newest message timestamp (Unix s) in this POST: the window's start.
    last_wrote: Mapping[str, int] = field(default_factory=dict)


def read_webhook(
    body: bytes, *, channel: str, phone_number_id: str, reset_keyword: str, received_at: float
) -> WebhookContent:
    """Read a verified POST body.

    Raises:
        PayloadInvalid: not JSON, not a WhatsApp Business Account notification, or a message
            or status without the fields Meta always sends.
    """
    data = safe_json.loads(body)
    if not isinstance(data, dict):
        raise PayloadInvalid("the body is not a JSON object")
    if data.get("object") != "whatsapp_business_account":
        raise PayloadInvalid("object is not whatsapp_business_account")
    inbounds: list[Inbound] = []
    statuses: list[StatusUpdate] = []
    last: dict[str, int] = {}
    for value in _values(data):
        metadata = _obj(value.get("metadata"), "metadata")
        if str(metadata.get("phone_number_id", "")) != phone_number_id:
            continue  # another number of the same app: its own channel takes it
        names = _profile_names(value.get("contacts"))
        for raw in _list(value.get("messages"), "messages"):
            inbound = _message(_obj(raw, "message"), channel=channel, names=names, reset_keyword=reset_keyword,
                               received_at=received_at)
            wa_id, stamp = _sender_and_time(_obj(raw, "message"))
            last[wa_id] = max(last.get(wa_id, 0), stamp)
            if inbound is not None:
                inbounds.append(inbound)
        statuses.extend(_status(_obj(raw, "status")) for raw in _list(value.get("statuses"), "statuses"))
    return WebhookContent(tuple(inbounds), tuple(statuses), last)


def _values(data: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for entry in _list(data.get("entry"), "entry"):
        for change in _list(_obj(entry, "entry").get("changes"), "changes"):
            change = _obj(change, "change")
            if change.get("field", "messages") != "messages":
                continue  # other subscribed fields (templates, quality) carry no messages
            yield _obj(change.get("value"), "value")


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise PayloadInvalid(f"{what} is not an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PayloadInvalid(f"{what} is not a list")
    return value


def _text(value: Any, what: str, *, required: bool = True) -> str:
    if isinstance(value, str) and (value or not required):
        return value
    if value is None and not required:
        return ""
    raise PayloadInvalid(f"{what} is missing or not a string")


def _profile_names(contacts: Any) -> dict[str, str]:
    names: dict[str, str] = {}
    for contact in _list(contacts, "contacts"):
        if isinstance(contact, dict) and isinstance(contact.get("profile"), dict):
            name = contact["profile"].get("name")
            if isinstance(name, str) and isinstance(contact.get("wa_id"), str):
                names[contact["wa_id"]] = name
    return names


def _sender_and_time(message: Mapping[str, Any]) -> tuple[str, int]:
    wa_id = _text(message.get("from"), "message.from")
    stamp = message.get("timestamp")
    # Meta writes Unix seconds as a string of digits.
    if isinstance(stamp, str) and stamp.isdigit() and len(stamp) <= 12:
        return wa_id, int(stamp)
    if isinstance(stamp, int) and 0 <= stamp < 10**12:
        return wa_id, stamp
    raise PayloadInvalid("message.timestamp is not Unix seconds")


def _message(
    message: Mapping[str, Any], *, channel: str, names: Mapping[str, str], reset_keyword: str, received_at: float
) -> Inbound | None:
    wamid = _text(message.get("id"), "message.id")
    wa_id, _ = _sender_and_time(message)
    kind = _text(message.get("type"), "message.type")
    content = _content(kind, message)
    if content is None:
        return None
    text, attachments, context = content
    inbound_kind = InboundKind.MESSAGE
    if not attachments and text.strip().casefold() == reset_keyword.casefold():
        inbound_kind, text = InboundKind.RESET, ""
    quoted = message.get("context")
    if isinstance(quoted, dict) and isinstance(quoted.get("id"), str):
        context = {**context, "replied_to": quoted["id"]}
    return Inbound(
        key=ConversationKey(channel, wa_id),
        event_id=wamid,
        kind=inbound_kind,
        sender_id=wa_id,
        sender_name=names.get(wa_id),
        text=text,
        attachments=attachments,
        context=context,
        route={"wa_id": wa_id, "message_id": wamid},
        received_at=received_at,
    )


def _content(kind: str, message: Mapping[str, Any]) -> tuple[str, tuple[Attachment, ...], dict[str, Any]] | None:
    """(text, files, context) of one message, or None for a type that starts nothing."""
    if kind == "text":
        return _text(_obj(message.get("text"), "text").get("body"), "text.body", required=False), (), {}
    if kind in _MEDIA:
        media = _obj(message.get(kind), kind)
        return _text(media.get("caption"), f"{kind}.caption", required=False), (_attachment(kind, media),), {}
    if kind == "location":
        return _location(_obj(message.get("location"), "location")), (), {}
    if kind == "contacts":
        return _contacts(_list(message.get("contacts"), "contacts")), (), {}
    if kind == "interactive":
        interactive = _obj(message.get("interactive"), "interactive")
        reply_type = interactive.get("type")
        if reply_type not in ("button_reply", "list_reply"):
            return None  # flows (nfm_reply) and others: not a choice we can put in words
        choice = _obj(interactive.get(reply_type), reply_type)
        title = _text(choice.get("title"), f"{reply_type}.title")
        return title, (), {"choice_id": _text(choice.get("id"), f"{reply_type}.id", required=False)}
    if kind == "button":  # a quick-reply button of a template
        button = _obj(message.get("button"), "button")
        return (_text(button.get("text"), "button.text"), (),
                {"choice_id": _text(button.get("payload"), "button.payload", required=False)})
    return None  # reaction, unsupported, system, order, ...


def _attachment(kind: str, media: Mapping[str, Any]) -> Attachment:
    media_id = _text(media.get("id"), f"{kind}.id")
    mime = _text(media.get("mime_type"), f"{kind}.mime_type", required=False) or "application/octet-stream"
    mime = mime.split(";")[0].strip().lower() or "application/octet-stream"
    name = _text(media.get("filename"), f"{kind}.filename", required=False)
    if not name:
        name = f"{_MEDIA[kind]}{_EXTENSIONS.get(mime, '')}"
    # A voice note is audio with ``voice: true`` (recorded in the app); any audio is heard anyway.
    voice = kind == "audio" and media.get("voice") is True
    return Attachment(ref=media_id, name=name, content_type=mime, voice=voice)


def _location(location: Mapping[str, Any]) -> str:
    lat, lon = location.get("latitude"), location.get("longitude")
    if not isinstance(lat, (int, float)) or not isinstance(lon, (int, float)):
        raise PayloadInvalid("location has no latitude/longitude")
    words = [str(location[k]) for k in ("name", "address") if isinstance(location.get(k), str) and location[k]]
    where = f"{lat}, {lon}"
    return f"📍 {', '.join(words)} ({where})" if words else f"📍 {where}"


def _contacts(contacts: list[Any]) -> str:
    lines = []
    for contact in contacts:
        if not isinstance(contact, dict):
            raise PayloadInvalid("a shared contact is not an object")
        name = contact.get("name")
        formatted = name.get("formatted_name") if isinstance(name, dict) else None
        label = formatted if isinstance(formatted, str) and formatted else "contact"
        phones = [p["phone"] for p in contact.get("phones") or () if isinstance(p, dict) and isinstance(p.get("phone"), str)]
        emails = [e["email"] for e in contact.get("emails") or () if isinstance(e, dict) and isinstance(e.get("email"), str)]
        lines.append("👤 " + ", ".join([label, *phones, *emails]))
    return "\n".join(lines)


def _status(status: Mapping[str, Any]) -> StatusUpdate:
    stamp = status.get("timestamp")
    code: int | None = None
    title = ""
    errors = status.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        raw_code = errors[0].get("code")
        code = raw_code if isinstance(raw_code, int) else None
        title = str(errors[0].get("title") or errors[0].get("message") or "")[:200]
    return StatusUpdate(
        wamid=_text(status.get("id"), "status.id"),
        status=_text(status.get("status"), "status.status"),
        recipient_id=_text(status.get("recipient_id"), "status.recipient_id", required=False),
        timestamp=int(stamp) if isinstance(stamp, str) and stamp.isdigit() and len(stamp) <= 12 else 0,
        error_code=code,
        error_title=title,
        callback_data=_text(status.get("biz_opaque_callback_data"), "status.biz_opaque_callback_data", required=False)[:512],
    )
