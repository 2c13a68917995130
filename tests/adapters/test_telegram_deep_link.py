"""``/start <payload>`` deep links (``t.me/<bot>?start=<payload>``) reach OCS as the channel's
``start_payload`` says: as the message text, as ``context.start_payload``, or both."""

from __future__ import annotations

import pytest

from gateway.core.models import InboundKind
from tests.adapters._telegram import MakeEnv, make_telegram  # noqa: F401 - fixture
from tests.fakes.telegram_api import fake_telegram, message_update  # noqa: F401 - fixture

USER = 4242


@pytest.mark.parametrize(
    ("mode", "text", "context"),
    [
        ("context", "/start", "campaign-42"),
        ("text", "campaign-42", None),
        ("both", "campaign-42", "campaign-42"),
    ],
)
async def test_the_start_payload_goes_where_the_channel_says(
    make_telegram: MakeEnv, mode: str, text: str, context: str | None
) -> None:
    env = await make_telegram(start_payload=mode)
    parsed = await env.adapter.parse(env.request(message_update(1, chat_id=USER, user_id=USER, text="/start campaign-42")))
    [inbound] = parsed.inbounds
    assert inbound.kind is InboundKind.MESSAGE
    assert inbound.text == text
    assert inbound.context.get("start_payload") == context


@pytest.mark.parametrize("mode", ["context", "text", "both"])
async def test_a_bare_start_is_sent_as_start_in_every_mode(make_telegram: MakeEnv, mode: str) -> None:
    env = await make_telegram(start_payload=mode)
    parsed = await env.adapter.parse(env.request(message_update(1, chat_id=USER, user_id=USER, text="/start")))
    [inbound] = parsed.inbounds
    assert inbound.text == "/start" and "start_payload" not in inbound.context


async def test_the_default_keeps_the_payload_in_the_context(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    parsed = await env.adapter.parse(env.request(message_update(1, chat_id=USER, user_id=USER, text="/start ref_7")))
    [inbound] = parsed.inbounds
    assert (inbound.text, inbound.context.get("start_payload")) == ("/start", "ref_7")
