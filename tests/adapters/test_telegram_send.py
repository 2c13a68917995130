"""Rendering and sending through the TelegramAdapter against the fake Bot API on real Redis:
what goes over the wire, the plain-text fallback, error mapping, pacing, files, several bots."""

from __future__ import annotations

import time

import pytest
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)

from adapters.telegram.keys import TelegramKeys
from adapters.telegram.outbound import translate
from gateway.core.errors import (
    DeliveryError,
    DeliveryRejected,
    RecipientGone,
    RetryLater,
)
from gateway.core.models import Outgoing, Reply, ReplyAttachment
from gateway.store.pacing import reserve_slot
from tests.adapters._telegram import MakeEnv, make_telegram  # noqa: F401 - fixture
from tests.fakes.telegram_api import fake_telegram  # noqa: F401 - fixture
from tests.support.servers import free_port

GROUP = -1009876543210
PRIVATE = {"chat_id": "55", "chat_type": "private"}
MB = 1024 * 1024


def text_part(html: str, plain: str | None = None) -> Outgoing:
    return Outgoing(text=html, plain=plain if plain is not None else html, hints={"parse_mode": "HTML"})


# -- render ------------------------------------------------------------------------------------


async def test_render_gives_html_chunks_then_one_part_per_file(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    photo = ReplyAttachment("chart.png", "image/png", 10, "https://ocs/files/1")
    parts = env.adapter.render(Reply("**Hi** there\n\n" + "word " * 1000, attachments=(photo,)))
    assert [p.hints.get("parse_mode") for p in parts] == ["HTML", "HTML", None]  # 5000 chars: 2 chunks
    assert parts[0].text.startswith("<b>Hi</b> there") and parts[0].plain.startswith("Hi there")
    assert parts[-1].attachment == photo


# -- send: the wire ----------------------------------------------------------------------------


async def test_group_answer_goes_to_the_topic_as_a_reply(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    route = {"chat_id": str(GROUP), "chat_type": "supergroup", "message_thread_id": "10", "reply_to": "77"}
    message_id = await env.adapter.send(route, text_part("<b>Hello</b> &amp; welcome", "Hello & welcome"))
    [call] = env.fake.calls("sendMessage")
    assert message_id == "1000"
    assert call.params == {
        "chat_id": GROUP, "text": "<b>Hello</b> &amp; welcome", "parse_mode": "HTML", "message_thread_id": 10,
        "reply_parameters": {"message_id": 77, "allow_sending_without_reply": True},
    }


async def test_refused_html_is_resent_as_the_plain_twin(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    env.fake.reject_html_next()
    message_id = await env.adapter.send(PRIVATE, text_part("<b>Hi</b> [docs]", "Hi [docs] (https://x.y)"))
    first, second = env.fake.calls("sendMessage")
    assert (first.status, first.params["parse_mode"]) == (400, "HTML")
    assert second.status == 200 and "parse_mode" not in second.params
    assert second.params["text"] == "Hi [docs] (https://x.y)"
    assert message_id == "1000"


# -- send: errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "description", "parameters", "expected", "detail"),
    [
        (429, "Too Many Requests: retry after 7", {"retry_after": 7}, RetryLater, 7.0),
        (403, "Forbidden: bot was blocked by the user", {}, RecipientGone, None),
        (403, "Forbidden: bot was kicked from the supergroup chat", {}, RecipientGone, None),
        (403, "Forbidden: user is deactivated", {}, RecipientGone, None),
        (400, "Bad Request: chat not found", {}, RecipientGone, None),
        # 400 + migrate_to_chat_id is followed, not an error: tests/adapters/test_telegram_migration.py
        (400, "Bad Request: message thread not found", {}, DeliveryRejected, None),
        (500, "Internal Server Error", {}, RetryLater, 5.0),
        (502, "Bad Gateway", {}, RetryLater, 5.0),
    ],
)
async def test_bot_api_errors_become_gateway_errors(
    make_telegram: MakeEnv,
    code: int,
    description: str,
    parameters: dict[str, int | None],
    expected: type[DeliveryError],
    detail: object,
) -> None:
    env = await make_telegram()
    env.fake.fail_next("sendMessage", code, description, retry_after=parameters.get("retry_after"),
                       migrate_to_chat_id=parameters.get("migrate_to_chat_id"))
    with pytest.raises(expected) as caught:
        await env.adapter.send(PRIVATE, text_part("hi"))
    if isinstance(caught.value, RetryLater):
        assert caught.value.retry_after_s == detail
        assert caught.value.rate_limited == (code == 429)  # flood control, not Telegram failing
    if isinstance(caught.value, RecipientGone) and detail:
        assert caught.value.new_chat_id == detail
    assert isinstance(caught.value.__cause__, TelegramError)  # the cause is kept


async def test_blocked_user_is_recipient_gone(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    env.fake.block_chat(55)
    with pytest.raises(RecipientGone, match="blocked"):
        await env.adapter.send(PRIVATE, text_part("hi"))


async def test_revoked_token_is_rejected_not_retried(make_telegram: MakeEnv) -> None:
    env = await make_telegram(token="999:revoked", register=False)
    with pytest.raises(DeliveryRejected, match="token"):
        await env.adapter.send(PRIVATE, text_part("hi"))


async def test_unreachable_bot_api_is_retried_later(make_telegram: MakeEnv) -> None:
    env = await make_telegram(api_base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RetryLater):
        await env.adapter.send(PRIVATE, text_part("hi"))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RetryAfter(12), RetryLater),
        (ChatMigrated(-100123), RecipientGone),
        (Forbidden("Forbidden: bot was blocked by the user"), RecipientGone),
        (BadRequest("Message is too long"), DeliveryRejected),
        (InvalidToken("Unauthorized"), DeliveryRejected),
        (Conflict("Conflict: terminated by other getUpdates request"), DeliveryRejected),
        (TimedOut(), RetryLater),
        (NetworkError("Bad Gateway"), RetryLater),
    ],
)
def test_each_ptb_error_has_one_gateway_meaning(error: TelegramError, expected: type[DeliveryError]) -> None:
    assert type(translate(error)) is expected


# -- pacing ------------------------------------------------------------------------------------


async def test_messages_to_one_chat_are_spaced_a_second_apart(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    started = time.monotonic()
    await env.adapter.send(PRIVATE, text_part("one"))
    await env.adapter.send({"chat_id": "56"}, text_part("other chat, no wait"))
    assert time.monotonic() - started < 0.5
    await env.adapter.send(PRIVATE, text_part("two"))
    assert time.monotonic() - started >= 0.9
    assert env.fake.sent_texts(55) == ["one", "two"]


async def test_a_long_pacing_wait_goes_back_to_the_queue(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    key = TelegramKeys.of(env.keys).chat_pace("tg", "55")
    for _ in range(3):  # three sends already booked the next three seconds
        await reserve_slot(env.redis, key, 1.0)
    with pytest.raises(RetryLater) as caught:
        await env.adapter.send(PRIVATE, text_part("later"))
    assert caught.value.retry_after_s >= 1.5
    assert env.fake.calls("sendMessage") == []


# -- files -------------------------------------------------------------------------------------


async def test_image_reply_is_uploaded_as_a_photo(make_telegram: MakeEnv) -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    env = await make_telegram(files={"https://ocs/f/1": png})
    attachment = ReplyAttachment("chart.png", "image/png", len(png), "https://ocs/f/1")
    await env.adapter.send(PRIVATE, Outgoing(attachment=attachment))
    [call] = env.fake.calls("sendPhoto")
    assert (call.files["photo"].filename, call.files["photo"].data) == ("chart.png", png)
    assert env.fetched == [attachment]


async def test_other_files_are_uploaded_as_documents(make_telegram: MakeEnv) -> None:
    env = await make_telegram(files={"https://ocs/f/2": b"%PDF-1.7"})
    attachment = ReplyAttachment("report.pdf", "application/pdf", 8, "https://ocs/f/2")
    await env.adapter.send({"chat_id": str(GROUP), "reply_to": "3"}, Outgoing(attachment=attachment))
    [call] = env.fake.calls("sendDocument")
    assert call.files["document"].filename == "report.pdf"
    assert call.params["reply_parameters"]["message_id"] == 3


async def test_file_over_the_50_mb_upload_limit_is_sent_as_a_link(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    attachment = ReplyAttachment("video.mp4", "video/mp4", 60 * MB, "https://ocs/f/3")
    await env.adapter.send(PRIVATE, Outgoing(attachment=attachment))
    assert env.fake.sent_texts(55) == ["video.mp4 (60 MB): https://ocs/f/3"]
    assert env.fetched == []  # not downloaded just to find out


async def test_file_that_cannot_be_fetched_from_ocs_is_sent_as_a_link(make_telegram: MakeEnv) -> None:
    env = await make_telegram(files={})  # OCS refuses the download (gone, too big, another host)
    attachment = ReplyAttachment("roster.pdf", "application/pdf", 2 * MB, "https://ocs/f/4")
    await env.adapter.send(PRIVATE, Outgoing(attachment=attachment))
    assert env.fake.sent_texts(55) == ["roster.pdf (2 MB): https://ocs/f/4"]
    assert env.fake.calls("sendDocument") == [] and env.fetched == [attachment]


# -- several bots ------------------------------------------------------------------------------


async def test_one_bots_trouble_does_not_touch_another(make_telegram: MakeEnv) -> None:
    a = await make_telegram("alpha", token="111:alpha", username="alpha_bot")
    b = await make_telegram("beta", token="222:beta", username="beta_bot")
    a.fake.rate_limit_next("sendMessage", retry_after=30, token="111:alpha", times=5)
    with pytest.raises(RetryLater):
        await a.adapter.send(PRIVATE, text_part("from alpha"))
    started = time.monotonic()
    await b.adapter.send(PRIVATE, text_part("from beta"))  # same chat id, its own pacing
    assert time.monotonic() - started < 0.5
    assert b.fake.sent_texts(55, token="222:beta") == ["from beta"]
    assert a.adapter.describe()["username"] == "@alpha_bot" and b.adapter.describe()["username"] == "@beta_bot"


async def test_route_without_a_chat_is_rejected(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    with pytest.raises(DeliveryRejected, match="chat_id"):
        await env.adapter.send({}, text_part("hi"))
