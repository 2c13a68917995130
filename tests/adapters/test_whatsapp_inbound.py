"""WhatsApp inbound: the signature on the raw body, each message type Meta sends, statuses that
never start a turn, and the window the edge records."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from adapters.whatsapp import signing
from adapters.whatsapp.inbound import read_webhook
from gateway.core.errors import PayloadInvalid, SignatureInvalid
from gateway.core.models import InboundKind
from tests.adapters._whatsapp import APP_SECRET, VERIFY_TOKEN, MakeEnv, make_whatsapp  # noqa: F401 - fixture
from tests.fakes.whatsapp_api import (
    PHONE_NUMBER_ID,
    encode,
    fake_whatsapp,  # noqa: F401 - fixture
    message_webhook,
    signed_headers,
    status_webhook,
)

USER = "16505551234"


def read(body: dict[str, Any], **kwargs: Any) -> Any:
    return read_webhook(encode(body), channel="wa", phone_number_id=PHONE_NUMBER_ID, reset_keyword="/reset",
                        received_at=time.time(), **kwargs)


# -- signatures and the handshake -------------------------------------------------------------------


def test_a_body_signed_with_the_app_secret_verifies() -> None:
    body = encode(message_webhook(USER, {"type": "text", "text": {"body": "hi"}}))
    signing.verify(APP_SECRET, signed_headers(body, APP_SECRET), body)


@pytest.mark.parametrize("headers", [
    {}, {"x-hub-signature-256": "sha1=abc"}, {"x-hub-signature-256": "sha256=" + "0" * 64},
])
def test_a_missing_or_wrong_signature_is_refused(headers: dict[str, str]) -> None:
    body = encode(message_webhook(USER, {"type": "text", "text": {"body": "hi"}}))
    with pytest.raises(SignatureInvalid):
        signing.verify(APP_SECRET, headers, body)


def test_a_body_changed_after_signing_is_refused() -> None:
    body = encode(message_webhook(USER, {"type": "text", "text": {"body": "hi"}}))
    headers = signed_headers(body, APP_SECRET)
    with pytest.raises(SignatureInvalid):
        signing.verify(APP_SECRET, headers, body.replace(b"hi", b"ho"))


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", spy)
    body = b'{"object":"whatsapp_business_account"}'
    signing.verify(APP_SECRET, signed_headers(body, APP_SECRET), body)
    expected = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert calls == [(expected.encode(), expected.encode())]
    signing.check_handshake({"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"}, VERIFY_TOKEN)
    assert len(calls) == 2


def test_the_handshake_echoes_the_challenge_only_for_our_token() -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    assert signing.check_handshake(query, VERIFY_TOKEN) == "1158201444"
    with pytest.raises(SignatureInvalid):
        signing.check_handshake({**query, "hub.verify_token": "guess"}, VERIFY_TOKEN)
    with pytest.raises(SignatureInvalid):
        signing.check_handshake({**query, "hub.mode": "unsubscribe"}, VERIFY_TOKEN)


# -- message types ----------------------------------------------------------------------------------


def test_text_becomes_one_inbound_keyed_by_its_wamid() -> None:
    content = read(message_webhook(USER, {"type": "text", "text": {"body": "Hello"}}, wamid="wamid.A1", name="Ada"))
    (inbound,) = content.inbounds
    assert (inbound.event_id, inbound.text, inbound.sender_id, inbound.sender_name) == ("wamid.A1", "Hello", USER, "Ada")
    assert str(inbound.key) == f"wa/{USER}"
    assert inbound.route == {"wa_id": USER, "message_id": "wamid.A1"}
    assert inbound.kind is InboundKind.MESSAGE


@pytest.mark.parametrize(("kind", "media", "name"), [
    ("image", {"id": "111", "mime_type": "image/jpeg", "sha256": "x", "caption": "my rash"}, "image.jpg"),
    ("document", {"id": "112", "mime_type": "application/pdf", "filename": "lab.pdf"}, "lab.pdf"),
    ("video", {"id": "113", "mime_type": "video/mp4"}, "video.mp4"),
    ("sticker", {"id": "114", "mime_type": "image/webp", "animated": False}, "sticker.webp"),
])
def test_media_messages_carry_the_media_id_and_caption(kind: str, media: dict[str, Any], name: str) -> None:
    (inbound,) = read(message_webhook(USER, {"type": kind, kind: media})).inbounds
    (attachment,) = inbound.attachments
    assert (attachment.ref, attachment.name, attachment.content_type) == (media["id"], name, media["mime_type"])
    assert inbound.text == media.get("caption", "")
    assert not attachment.voice


def test_a_voice_note_is_flagged_for_transcription() -> None:
    body = message_webhook(USER, {"type": "audio", "audio": {"id": "115", "mime_type": "audio/ogg; codecs=opus",
                                                             "voice": True}})
    (attachment,) = read(body).inbounds[0].attachments
    assert attachment.voice and attachment.spoken and attachment.content_type == "audio/ogg"


def test_location_and_contacts_arrive_as_text() -> None:
    location = {"type": "location", "location": {"latitude": -1.2921, "longitude": 36.8219, "name": "Clinic",
                                                 "address": "Ngong Rd"}}
    assert read(message_webhook(USER, location)).inbounds[0].text == "📍 Clinic, Ngong Rd (-1.2921, 36.8219)"
    contacts = {"type": "contacts", "contacts": [{"name": {"formatted_name": "Dr Wanjiku", "first_name": "W"},
                                                  "phones": [{"phone": "+254 700 000000", "type": "CELL"}]}]}
    assert read(message_webhook(USER, contacts)).inbounds[0].text == "👤 Dr Wanjiku, +254 700 000000"


@pytest.mark.parametrize("message", [
    {"type": "interactive", "interactive": {"type": "button_reply", "button_reply": {"id": "yes-1", "title": "Yes"}}},
    {"type": "interactive", "interactive": {"type": "list_reply",
                                            "list_reply": {"id": "yes-1", "title": "Yes", "description": "d"}}},
    {"type": "button", "button": {"payload": "yes-1", "text": "Yes"}},
])
def test_button_and_list_replies_are_the_title_tapped(message: dict[str, Any]) -> None:
    (inbound,) = read(message_webhook(USER, message)).inbounds
    assert inbound.text == "Yes" and inbound.context["choice_id"] == "yes-1"


@pytest.mark.parametrize("message", [
    {"type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": "👍"}},
    {"type": "unsupported", "errors": [{"code": 131051, "title": "Message type unknown"}]},
])
def test_reactions_and_unsupported_messages_start_nothing_but_open_the_window(message: dict[str, Any]) -> None:
    content = read(message_webhook(USER, message, timestamp=1_800_000_000))
    assert content.inbounds == () and content.last_wrote == {USER: 1_800_000_000}


def test_the_reset_keyword_starts_over() -> None:
    (inbound,) = read(message_webhook(USER, {"type": "text", "text": {"body": " /RESET "}})).inbounds
    assert inbound.kind is InboundKind.RESET


def test_a_quoted_message_is_named_in_the_context() -> None:
    body = message_webhook(USER, {"type": "text", "text": {"body": "this"}, "context": {"from": "1555", "id": "wamid.Q"}})
    assert read(body).inbounds[0].context == {"replied_to": "wamid.Q"}


def test_messages_to_another_number_of_the_app_are_not_this_channels() -> None:
    body = message_webhook(USER, {"type": "text", "text": {"body": "hi"}}, phone_number_id="999")
    assert read(body).inbounds == ()


@pytest.mark.parametrize("body", [
    {"object": "page", "entry": []},
    {"object": "whatsapp_business_account", "entry": {"id": 1}},
    {"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": []}]}]},
    message_webhook(USER, {"type": "text", "text": {"body": "hi"}}, timestamp=-5),
])
def test_bodies_meta_never_sends_are_invalid(body: dict[str, Any]) -> None:
    with pytest.raises(PayloadInvalid):
        read(body)


# -- statuses and the window, through the adapter ---------------------------------------------------


async def test_statuses_start_no_turn_and_move_the_delivery_record(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp()
    await env.open_window(USER)
    from gateway.core.models import Outgoing
    wamid = await env.adapter.send({"wa_id": USER}, Outgoing(text="hello", plain="hello"))
    record = env.keys.sent("wa", wamid)
    assert (await env.redis.hget(record, "status")) == b"accepted"
    for status in ("delivered", "sent"):  # out of order: "sent" must not go back
        parsed = await env.adapter.parse(env.request(status_webhook(wamid, status, wa_id=USER)))
        assert parsed.inbounds == ()
    assert (await env.redis.hget(record, "status")) == b"delivered"
    await env.adapter.parse(env.request(status_webhook(wamid, "failed", wa_id=USER, error_code=131026)))
    assert (await env.redis.hgetall(record))[b"error"].startswith(b"131026")
    counted = {s: env.metrics.delivery_receipts.labels("wa", s)._value.get() for s in ("sent", "delivered", "failed")}
    assert counted == {"sent": 1, "delivered": 1, "failed": 1}


async def test_the_window_opens_with_the_users_message_and_never_moves_back(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp()
    now = int(time.time())
    await env.adapter.parse(env.request(message_webhook(USER, {"type": "text", "text": {"body": "a"}}, timestamp=now)))
    key = env.keys.window("wa", USER)
    assert int(await env.redis.get(key)) == now
    assert 86400 - 5 < await env.redis.ttl(key) <= 86400
    # Meta redelivers an older message: the window keeps the newer start.
    await env.adapter.parse(env.request(message_webhook(USER, {"type": "text", "text": {"body": "b"}},
                                                        timestamp=now - 3600)))
    assert int(await env.redis.get(key)) == now
    # A message whose window closed long ago (redelivered for days) opens nothing.
    other = "447700900123"
    await env.adapter.parse(env.request(message_webhook(other, {"type": "text", "text": {"body": "c"}},
                                                        timestamp=now - 90000)))
    assert not await env.redis.exists(env.keys.window("wa", other))


def test_a_status_body_matches_metas_shape() -> None:
    body = status_webhook("wamid.S", "read")
    value = body["entry"][0]["changes"][0]["value"]
    assert value["statuses"][0]["status"] == "read" and value["metadata"]["phone_number_id"] == PHONE_NUMBER_ID
    assert json.loads(encode(body)) == body
