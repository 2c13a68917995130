"""WhatsApp outbound: formatting and the 4,096 split, files uploaded or linked, quoted replies,
read receipts with typing, the 24-hour window (template or park), pacing and Meta's error codes."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from adapters.whatsapp.format import MAX_TEXT_CHARS, markdown_to_whatsapp
from adapters.whatsapp.graph import GraphError, translate
from gateway.core.errors import DeliveryError, DeliveryRejected, PacingWait, RecipientGone, RetryLater
from gateway.core.models import Delivery, Outgoing, Reply, ReplyAttachment, ReplyKind
from tests.adapters._whatsapp import MakeEnv, make_whatsapp  # noqa: F401 - fixture
from tests.fakes.whatsapp_api import ERRORS, fake_whatsapp  # noqa: F401 - fixture

USER = "16505551234"
ROUTE = {"wa_id": USER, "message_id": "wamid.IN1"}


def text(value: str) -> Outgoing:
    return Outgoing(text=value, plain=value, hints={"kind": "answer"})


# -- formatting -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("markdown", "expected"), [
    ("**bold** and *italic* and ~~gone~~", "*bold* and _italic_ and ~gone~"),
    ("# Title\n\nbody", "*Title*\n\nbody"),
    ("use `pip` here", "use `pip` here"),
    ("```\nline 1\nline 2\n```", "```line 1\nline 2```"),
    ("- one\n- two", "- one\n- two"),
    ("1. one\n2. two", "1. one\n2. two"),
    ("> quoted", "> quoted"),
    ("[the docs](https://example.org/d)", "the docs (https://example.org/d)"),
    ("https://example.org", "https://example.org"),
    ("**bold with *inner* italic**", "*bold with _inner_ italic*"),
])
def test_markdown_becomes_whatsapps_own_formatting(markdown: str, expected: str) -> None:
    assert markdown_to_whatsapp(markdown) == [expected]


def test_a_long_reply_is_split_under_4096_characters_between_paragraphs() -> None:
    paragraphs = [f"Paragraph {i} " + "word " * 150 for i in range(12)]
    chunks = markdown_to_whatsapp("\n\n".join(paragraphs))
    assert len(chunks) > 1 and all(len(c) <= MAX_TEXT_CHARS for c in chunks)
    assert " ".join(" ".join(chunks).split()) == " ".join(" ".join(p.strip() for p in paragraphs).split())


def test_a_code_block_cut_in_two_stays_monospace_in_both() -> None:
    code = "\n".join(f"line {i:05d} " + "x" * 60 for i in range(120))
    chunks = markdown_to_whatsapp(f"```\n{code}\n```")
    assert len(chunks) >= 2
    assert all(c.startswith("```") and c.endswith("```") and len(c) <= MAX_TEXT_CHARS for c in chunks)


async def test_render_splits_text_then_one_part_per_file(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp()
    att = ReplyAttachment("lab.pdf", "application/pdf", 10, "https://ocs/f/1")
    parts = env.adapter.render(Reply(text="x " * 3000, attachments=(att,)))
    assert [p.attachment for p in parts] == [None, None, att]


# -- sending ----------------------------------------------------------------------------------------


async def test_a_text_goes_to_the_messages_endpoint_with_the_token(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp()
    await env.open_window(USER)
    wamid = await env.adapter.send(ROUTE, text("*Hi* there"), Delivery("r1.0"))
    (sent,) = env.fake.sent()
    assert sent.wamid == wamid and sent.authorization == "Bearer EAAJB-test-token"
    assert sent.body == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": USER, "type": "text",
                         "text": {"body": "*Hi* there", "preview_url": False}, "biz_opaque_callback_data": "r1.0"}
    assert (await env.redis.hget(env.keys.sent("wa", wamid), "delivery")) == b"r1.0"


async def test_the_answer_to_a_burst_quotes_its_last_message_once(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp()
    await env.open_window(USER)
    route = env.adapter.reply_route([{"wa_id": USER, "message_id": "wamid.A"}, {"wa_id": USER, "message_id": "wamid.B"}])
    assert env.adapter.reply_route([{"wa_id": USER, "message_id": "wamid.A"}]).get("reply_to") is None
    await env.adapter.send(route, text("one"), Delivery("r.0", 0, 2))
    await env.adapter.send(route, text("two"), Delivery("r.1", 1, 2))
    first, second = env.fake.sent()
    assert first.body["context"] == {"message_id": "wamid.B"} and "context" not in second.body


async def test_quote_replies_always_quotes_a_single_message(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(quote_replies="always")
    assert env.adapter.reply_route([ROUTE])["reply_to"] == "wamid.IN1"


async def test_an_image_is_uploaded_then_sent_by_media_id(make_whatsapp: MakeEnv) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 100
    env = await make_whatsapp(files={"https://ocs/f/1": png})
    await env.open_window(USER)
    await env.adapter.send(ROUTE, Outgoing(attachment=ReplyAttachment("chart.png", "image/png", len(png), "https://ocs/f/1")))
    (sent,) = env.fake.sent()
    assert sent.type == "image" and env.fake.uploaded(sent.body["image"]["id"]) == png


async def test_a_pdf_goes_as_a_document_with_its_name(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(files={"https://ocs/f/2": b"%PDF-1.7"})
    await env.open_window(USER)
    await env.adapter.send(ROUTE, Outgoing(attachment=ReplyAttachment("lab.pdf", "application/pdf", 8, "https://ocs/f/2")))
    assert env.fake.sent()[0].body["document"]["filename"] == "lab.pdf"


async def test_media_by_link_lets_meta_fetch_the_file(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(media_by_link=True)
    await env.open_window(USER)
    await env.adapter.send(ROUTE, Outgoing(attachment=ReplyAttachment("a.jpg", "image/jpeg", 9, "https://files.example/a.jpg")))
    assert env.fake.sent()[0].body["image"] == {"link": "https://files.example/a.jpg"}
    assert env.fetched == []  # the gateway never fetched it


async def test_a_file_ocs_will_not_give_goes_as_its_name_and_address(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp()
    await env.open_window(USER)
    await env.adapter.send(ROUTE, Outgoing(attachment=ReplyAttachment("gone.pdf", "application/pdf", 5, "https://ocs/f/x")))
    assert env.fake.texts() == ["gone.pdf (0.0 MB): https://ocs/f/x"]


async def test_working_marks_the_message_read_with_a_typing_indicator(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp()
    await env.adapter.show_working(ROUTE)
    assert env.fake.reads() == [{"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN1",
                                 "typing_indicator": {"type": "text"}}]
    quiet = await make_whatsapp(name="quiet", read_receipts=False)
    await quiet.adapter.show_working(ROUTE)
    assert len(env.fake.reads()) == 1


# -- the 24-hour window -----------------------------------------------------------------------------


async def test_a_push_outside_the_window_goes_as_the_configured_template(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(template_name="ocs_update", template_language="en")
    (part,) = env.adapter.render(Reply(text="Your **results** are in.\nCall us.", kind=ReplyKind.PUSH))
    await env.adapter.send({"wa_id": USER}, part)
    (sent,) = env.fake.sent()
    assert sent.type == "template"
    assert sent.body["template"] == {"name": "ocs_update", "language": {"code": "en"}, "components": [
        {"type": "body", "parameters": [{"type": "text", "text": "Your *results* are in. Call us."}]}]}


async def test_a_long_push_is_split_to_fit_a_template_parameter(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(template_name="ocs_update")
    parts = env.adapter.render(Reply(text="word " * 600, kind=ReplyKind.PUSH))
    assert len(parts) == 4 and all(len(p.text) <= 900 for p in parts)


async def test_without_a_template_a_message_outside_the_window_is_parked_with_the_reason(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp()
    with pytest.raises(DeliveryRejected, match=r"24-hour window.*template_name"):
        await env.adapter.send({"wa_id": USER}, text("reminder"))
    assert env.fake.sent() == []


async def test_inside_the_window_a_push_goes_as_plain_text(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(template_name="ocs_update")
    await env.open_window(USER)
    (part,) = env.adapter.render(Reply(text="hello", kind=ReplyKind.PUSH))
    await env.adapter.send({"wa_id": USER}, part)
    assert env.fake.sent()[0].type == "text"


async def test_a_re_engagement_error_is_resent_as_the_template(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(template_name="ocs_update")
    await env.open_window(USER)  # our record says open; Meta's clock says closed
    env.fake.close_window(USER)
    await env.adapter.send({"wa_id": USER}, text("later"))
    assert env.fake.refused == [131047] and [s.type for s in env.fake.sent()] == ["template"]


# -- limits and errors ------------------------------------------------------------------------------


async def test_messages_to_one_user_are_spaced_by_the_pair_interval(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(pair_interval_s=0.4)
    await env.open_window(USER)
    for i in range(3):
        await env.adapter.send(ROUTE, text(f"part {i}"), Delivery(f"r.{i}", i, 3))
    times = [s.at for s in env.fake.sent()]
    assert all(b - a >= 0.35 for a, b in itertools.pairwise(times))


async def test_a_long_pacing_wait_goes_back_to_the_queue(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(pair_interval_s=30)
    await env.open_window(USER)
    await env.adapter.send(ROUTE, text("first"))
    with pytest.raises(PacingWait):
        await env.adapter.send(ROUTE, text("second"))
    assert len(env.fake.sent()) == 1


async def test_a_pair_rate_error_holds_that_user_for_every_worker(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(pair_interval_s=0.05, pair_backoff_s=6.0)
    await env.open_window(USER)
    await env.open_window("447700900123")
    env.fake.fail_next(131056)
    with pytest.raises(RetryLater) as caught:
        await env.adapter.send(ROUTE, text("one"))
    assert caught.value.rate_limited and caught.value.retry_after_s == 6.0
    with pytest.raises(PacingWait):  # the next send to this user waits out the hold
        await env.adapter.send(ROUTE, text("two"))
    await env.adapter.send({"wa_id": "447700900123"}, text("others are not held"))
    assert [s.to for s in env.fake.sent()] == ["447700900123"]


async def test_a_throughput_error_holds_the_whole_number(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp()
    await env.open_window(USER)
    env.fake.fail_next(130429)
    with pytest.raises(RetryLater) as caught:
        await env.adapter.send(ROUTE, text("one"))
    assert caught.value.rate_limited
    wait_ms = await env.redis.pttl(env.keys.number_pace("wa"))
    assert wait_ms > 1000


async def test_the_fakes_pair_limit_is_never_hit_when_paced(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(pair_interval_s=0.3)
    env.fake.pair_limit, env.fake.pair_window_s = 2, 0.5
    await env.open_window(USER)

    async def deliver(i: int) -> None:
        while True:
            try:
                await env.adapter.send(ROUTE, text(f"m{i}"), Delivery(f"r.{i}", i, 6))
                return
            except PacingWait as wait:
                await asyncio.sleep(wait.retry_after_s)

    await asyncio.gather(*(deliver(i) for i in range(6)))
    assert len(env.fake.sent()) == 6 and env.fake.refused == []


@pytest.mark.parametrize(("code", "expected"), [
    (130429, RetryLater), (131056, RetryLater), (131000, RetryLater),
    (131026, RecipientGone),
    (190, DeliveryRejected), (131047, DeliveryRejected), (100, DeliveryRejected), (132001, DeliveryRejected),
])
def test_each_graph_error_code_has_one_gateway_meaning(code: int, expected: type[DeliveryError]) -> None:
    status = 401 if code == 190 else ERRORS[code][0]
    error = translate(GraphError(status, code, f"(#{code}) title", "details"))
    assert type(error) is expected


def test_a_5xx_without_a_code_is_retried_and_a_429_says_rate_limited() -> None:
    assert isinstance(translate(GraphError(503, None, "", "")), RetryLater)
    limited = translate(GraphError(429, None, "", "", "7"))
    assert isinstance(limited, RetryLater) and limited.rate_limited and limited.retry_after_s == 7


async def test_a_bad_token_is_given_up_with_the_fix(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp()
    await env.open_window(USER)
    env.fake.fail_next(190)
    with pytest.raises(DeliveryRejected, match="renew access_token"):
        await env.adapter.send(ROUTE, text("x"))


async def test_a_user_not_on_whatsapp_is_gone(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp()
    await env.open_window(USER)
    env.fake.fail_next(131026)
    with pytest.raises(RecipientGone):
        await env.adapter.send(ROUTE, text("x"))


async def test_an_unreachable_graph_api_is_retried_later(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(api_base_url="http://127.0.0.1:9/v23.0")
    await env.open_window(USER)
    started = time.monotonic()
    with pytest.raises(RetryLater):
        await env.adapter.send(ROUTE, text("x"))
    assert time.monotonic() - started < 30


async def test_a_part_meta_already_took_is_not_sent_again(make_whatsapp: MakeEnv) -> None:
    """A worker killed between Meta's answer and the turn's ledger: the next owner sends the
    same delivery id again, and gets the first wamid back without a second message."""
    env = await make_whatsapp()
    await env.open_window(USER)
    first = await env.adapter.send(ROUTE, text("once"), Delivery("turn-7.0"))
    again = await env.adapter.send(ROUTE, text("once"), Delivery("turn-7.0"))
    assert again == first and len(env.fake.sent()) == 1


async def test_a_part_whose_sender_died_mid_request_is_settled_by_metas_status(make_whatsapp: MakeEnv) -> None:
    """The claim of a sender that never learnt Meta's answer holds the part; Meta's ``sent``
    status, naming the part, settles it: the next sender returns that wamid unsent."""
    from adapters.whatsapp import receipts
    from tests.fakes.whatsapp_api import status_webhook

    env = await make_whatsapp()
    await env.open_window(USER)
    claim = await receipts.claim_part(env.redis, env.keys, "wa", "turn-9.0", ttl_s=15)  # the dead sender's
    assert claim.marker is not None
    with pytest.raises(PacingWait):
        await env.adapter.send(ROUTE, text("once"), Delivery("turn-9.0"))
    status = status_webhook("wamid.FROM.META", "sent", wa_id=USER)
    status["entry"][0]["changes"][0]["value"]["statuses"][0]["biz_opaque_callback_data"] = "turn-9.0"
    await env.adapter.parse(env.request(status))
    assert await env.adapter.send(ROUTE, text("once"), Delivery("turn-9.0")) == "wamid.FROM.META"
    assert env.fake.sent() == []


async def test_a_refused_part_can_be_sent_again_at_once(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp()
    await env.open_window(USER)
    env.fake.fail_next(131000)
    with pytest.raises(RetryLater):
        await env.adapter.send(ROUTE, text("x"), Delivery("turn-3.0"))
    await env.adapter.send(ROUTE, text("x"), Delivery("turn-3.0"))
    assert len(env.fake.sent()) == 1
    assert env.fake.sent()[0].body["biz_opaque_callback_data"] == "turn-3.0"
