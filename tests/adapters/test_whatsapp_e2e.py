"""WhatsApp end to end: Meta's webhook through the real edge and worker to the OCS simulator and
back to the fake Graph API (tests/HARNESS.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.core.keys import Keys
from gateway.core.models import ConversationKey
from tests.adapters._whatsapp import APP_SECRET, VERIFY_TOKEN, channel_settings
from tests.conftest import Stack, settled, wait_for
from tests.fakes.whatsapp_api import (
    FakeWhatsApp,
    encode,
    fake_whatsapp,  # noqa: F401 - fixture
    message_webhook,
    signed_headers,
    status_webhook,
)

USER = "16505551234"


@pytest.fixture
def wa_stack(fake_whatsapp: FakeWhatsApp, make_stack: Callable[..., Stack]) -> Stack:
    # fake_whatsapp first, so it is stopped after the gateway (fixtures tear down in reverse).
    return make_stack(channels={"wa": channel_settings(fake_whatsapp, template_name="ocs_update")})


def post(stack: Stack, body: dict[str, Any] | bytes, *, secret: str = APP_SECRET) -> httpx.Response:
    raw = body if isinstance(body, bytes) else encode(body)
    return stack.http.post(f"{stack.url}/whatsapp/wa", content=raw, headers=signed_headers(raw, secret))


def say(stack: Stack, text: str, *, wamid: str | None = None, wa_id: str = USER) -> str:
    wamid = wamid or f"wamid.in.{time.time_ns()}"
    response = post(stack, message_webhook(wa_id, {"type": "text", "text": {"body": text}}, wamid=wamid))
    assert response.status_code == 200, response.text
    return wamid


def replies(fake: FakeWhatsApp, count: int, wa_id: str = USER) -> list[str]:
    texts: list[str] = wait_for(lambda: (t := fake.texts(wa_id)) and len(t) >= count and t, timeout=30,
                                what=f"{count} replies to {wa_id}")
    return texts


def test_the_handshake_echoes_the_challenge_and_refuses_a_wrong_token(wa_stack: Stack) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    good = wa_stack.http.get(f"{wa_stack.url}/whatsapp/wa", params=query)
    assert (good.status_code, good.text) == (200, "1158201444")
    wrong = wa_stack.http.get(f"{wa_stack.url}/whatsapp/wa", params={**query, "hub.verify_token": "nope"})
    assert wrong.status_code == 403 and "1158201444" not in wrong.text


def test_a_text_round_trip_with_read_receipt_and_typing(wa_stack: Stack, fake_whatsapp: FakeWhatsApp) -> None:
    wamid = say(wa_stack, "hello")
    assert replies(fake_whatsapp, 1) == ["Echo #1: hello"]
    assert fake_whatsapp.reads()[0] == {"messaging_product": "whatsapp", "status": "read", "message_id": wamid,
                                        "typing_indicator": {"type": "text"}}
    (sent,) = fake_whatsapp.sent(USER)
    assert sent.type == "text" and "context" not in sent.body


def test_a_bad_signature_stores_nothing(wa_stack: Stack, fake_whatsapp: FakeWhatsApp) -> None:
    body = message_webhook(USER, {"type": "text", "text": {"body": "forged"}}, wamid="wamid.forged")
    response = post(wa_stack, body, secret="not-the-app-secret")
    assert response.status_code == 401
    unsigned = wa_stack.http.post(f"{wa_stack.url}/whatsapp/wa", content=encode(body),
                                  headers={"content-type": "application/json"})
    assert unsigned.status_code == 401
    keys = Keys()
    assert wa_stack.redis.llen(keys.inbox(ConversationKey("wa", USER))) == 0
    assert not wa_stack.redis.exists(keys.seen("wa", "wamid.forged"))
    assert not wa_stack.redis.keys("ocsgw:wa:window:*")


def test_a_redelivered_wamid_makes_one_turn(wa_stack: Stack, fake_whatsapp: FakeWhatsApp) -> None:
    say(wa_stack, "once", wamid="wamid.same")
    say(wa_stack, "once", wamid="wamid.same")
    replies(fake_whatsapp, 1)
    settled(wa_stack.redis, timeout=30)
    assert fake_whatsapp.texts(USER) == ["Echo #1: once"]


def test_statuses_never_start_a_turn(wa_stack: Stack, fake_whatsapp: FakeWhatsApp) -> None:
    say(wa_stack, "hi")
    (sent_id,) = [s.wamid for s in wait_for(lambda: fake_whatsapp.sent(USER), timeout=30, what="the answer")]
    settled(wa_stack.redis, timeout=30)
    before = wa_stack.sim.state.request_counts()
    for status in ("sent", "delivered", "read"):
        assert post(wa_stack, status_webhook(sent_id, status, wa_id=USER)).status_code == 200
    record = f"ocsgw:wa:sent:wa:{sent_id}"
    wait_for(lambda: wa_stack.redis.hget(record, "status") == b"read", what="the read status on the record")
    settled(wa_stack.redis, timeout=30)
    assert wa_stack.sim.state.request_counts()["message"] == before["message"]
    assert fake_whatsapp.texts(USER) == ["Echo #1: hi"]
    assert wa_stack.redis.llen(Keys().inbox(ConversationKey("wa", USER))) == 0


def test_a_push_goes_as_text_inside_the_window_and_as_the_template_outside(
    wa_stack: Stack, fake_whatsapp: FakeWhatsApp
) -> None:
    say(wa_stack, "remind me")
    replies(fake_whatsapp, 1)
    (session,) = wa_stack.sim.state.list_sessions()
    wa_stack.sim.state.push_bot_message(session.id, "Reminder: 10:30")
    assert replies(fake_whatsapp, 2)[1] == "Reminder: 10:30"
    assert fake_whatsapp.sent(USER)[1].type == "text"
    wa_stack.redis.delete(f"ocsgw:wa:window:wa:{USER}")  # 24 hours later
    wa_stack.sim.state.push_bot_message(session.id, "Reminder: tomorrow\nat 9")
    assert replies(fake_whatsapp, 3)[2] == "Reminder: tomorrow at 9"
    assert fake_whatsapp.sent(USER)[2].type == "template"


def test_without_a_template_a_push_outside_the_window_is_parked_with_its_reason(
    fake_whatsapp: FakeWhatsApp, make_stack: Callable[..., Stack]
) -> None:
    stack = make_stack(channels={"wa": channel_settings(fake_whatsapp)})
    say(stack, "hi")
    replies(fake_whatsapp, 1)
    stack.redis.delete(f"ocsgw:wa:window:wa:{USER}")
    (session,) = stack.sim.state.list_sessions()
    stack.sim.state.push_bot_message(session.id, "Reminder")
    keys = Keys()
    (letter_id,) = wait_for(lambda: stack.redis.zrange(keys.dlq, 0, -1), timeout=30, what="the parked push")
    letter = json.loads(stack.redis.get(f"{keys.dlq}:{letter_id.decode()}") or b"{}")
    assert "24-hour window" in json.dumps(letter) and "template_name" in json.dumps(letter)
    assert fake_whatsapp.texts(USER) == ["Echo #1: hi"]


def test_a_voice_note_without_speech_gets_the_voice_notice(wa_stack: Stack, fake_whatsapp: FakeWhatsApp) -> None:
    media_id = fake_whatsapp.add_media(b"OggS", "audio/ogg")
    body = message_webhook(USER, {"type": "audio", "audio": {"id": media_id, "mime_type": "audio/ogg; codecs=opus",
                                                             "voice": True}})
    assert post(wa_stack, body).status_code == 200
    notice = wa_stack.config.channels["wa"].voice_notice
    assert replies(fake_whatsapp, 1) == [notice]
    assert wa_stack.sim.state.request_counts()["message"] == 0
