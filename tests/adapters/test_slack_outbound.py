"""Slack outbound against the fake Web API: what goes over the wire, how ``ok: false`` codes and
429s become our errors, pacing, the working reaction, and files both ways."""

from __future__ import annotations

import time

import pytest
from slack_sdk.oauth.installation_store import Installation

from adapters.slack.api import GONE_CODES, SlackApi, slack_errors
from adapters.slack.files import MAX_UPLOAD_BYTES
from adapters.slack.keys import SlackKeys
from adapters.slack.outbound import WORKING_REACTION
from gateway.core.config import Secret
from gateway.core.errors import (
    AttachmentUnavailable,
    DeliveryRejected,
    RecipientGone,
    RetryLater,
)
from gateway.core.models import Attachment, Outgoing, ReplyAttachment
from gateway.store.pacing import reserve_slot
from tests.adapters._slack import MakeEnv, SlackEnv, make_slack
from tests.fakes.slack_api import FakeSlack, Workspace, fake_slack
from tests.support.servers import free_port

__all__ = ["fake_slack", "make_slack"]

THREAD = {"team": "T1", "channel": "C1", "thread_ts": "1700000000.000100", "reply_to": "1700000000.000100"}


async def single(make_slack: MakeEnv, fake: FakeSlack, **channel: object) -> tuple[SlackEnv, Workspace]:
    ws = fake.add_workspace("T1")
    return await make_slack(bot_token=Secret(ws.token), **channel), ws


async def test_reply_is_posted_in_the_thread_as_mrkdwn(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, ws = await single(make_slack, fake_slack)
    ts = await env.adapter.send(THREAD, Outgoing(text="*Hi* <https://x.org|there>", plain="Hi there"))
    (call,) = fake_slack.calls("chat.postMessage")
    assert call.token == ws.token
    assert call.params == {
        "channel": "C1",
        "thread_ts": "1700000000.000100",
        "text": "*Hi* <https://x.org|there>",
        "mrkdwn": True,
        "unfurl_links": False,
        "unfurl_media": False,
    }
    assert ts == fake_slack.messages()[0].ts


async def test_dm_reply_outside_a_thread_has_no_thread_ts(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    await env.adapter.send({"team": "T1", "channel": "D1", "reply_to": "1.2"}, Outgoing(text="hello"))
    assert "thread_ts" not in fake_slack.calls("chat.postMessage")[0].params


@pytest.mark.parametrize("code", sorted(GONE_CODES))
async def test_gone_codes_become_recipient_gone(make_slack: MakeEnv, fake_slack: FakeSlack, code: str) -> None:
    env, _ = await single(make_slack, fake_slack)
    fake_slack.fail_next("chat.postMessage", code)
    with pytest.raises(RecipientGone) as caught:
        await env.adapter.send(THREAD, Outgoing(text="hi"))
    assert caught.value.reason == code


PERMANENT = ["msg_too_long", "no_text", "invalid_blocks", "too_many_attachments", "missing_scope", "some_new_error"]


@pytest.mark.parametrize("code", PERMANENT)
async def test_permanent_codes_become_delivery_rejected(make_slack: MakeEnv, fake_slack: FakeSlack, code: str) -> None:
    env, _ = await single(make_slack, fake_slack)
    fake_slack.fail_next("chat.postMessage", code)
    with pytest.raises(DeliveryRejected, match=code):
        await env.adapter.send(THREAD, Outgoing(text="hi"))


@pytest.mark.parametrize("code", ["fatal_error", "internal_error", "service_unavailable", "request_timeout"])
async def test_transient_codes_become_retry_later(make_slack: MakeEnv, fake_slack: FakeSlack, code: str) -> None:
    env, _ = await single(make_slack, fake_slack)
    fake_slack.fail_next("chat.postMessage", code)
    with pytest.raises(RetryLater) as caught:
        await env.adapter.send(THREAD, Outgoing(text="hi"))
    assert caught.value.retry_after_s == 5.0
    assert not caught.value.rate_limited  # Slack failing, not throttling: counted as an error


async def test_429_becomes_retry_later_with_retry_after(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    fake_slack.rate_limit_next("chat.postMessage", retry_after=7)
    with pytest.raises(RetryLater) as caught:
        await env.adapter.send(THREAD, Outgoing(text="hi"))
    assert caught.value.retry_after_s == 7.0
    assert caught.value.rate_limited
    assert fake_slack.messages() == []


async def test_http_5xx_becomes_retry_later(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    fake_slack.fail_next("chat.postMessage", "upstream", status=503)
    with pytest.raises(RetryLater) as caught:
        await env.adapter.send(THREAD, Outgoing(text="hi"))
    assert not caught.value.rate_limited


async def test_unreachable_slack_becomes_retry_later() -> None:
    api = SlackApi(f"http://127.0.0.1:{free_port()}/api", timeout_s=2)
    try:
        with pytest.raises(RetryLater), slack_errors("chat.postMessage"):
            await api.client().chat_postMessage(token="xoxb-x", channel="C1", text="hi")
    finally:
        await api.aclose()


async def test_revoked_token_is_recipient_gone(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, ws = await single(make_slack, fake_slack)
    fake_slack.revoke(ws.token)
    with pytest.raises(RecipientGone, match="token_revoked"):
        await env.adapter.send(THREAD, Outgoing(text="hi"))


# -- pacing ---------------------------------------------------------------------------------------


async def test_sends_in_one_channel_are_paced_about_one_per_second(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    started = time.monotonic()
    for text in ("one", "two"):
        await env.adapter.send(THREAD, Outgoing(text=text))
    assert time.monotonic() - started >= 0.9
    assert fake_slack.texts() == ["one", "two"]


async def test_other_channels_are_not_held_up(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    started = time.monotonic()
    for channel in ("C1", "C2", "C3"):
        await env.adapter.send({**THREAD, "channel": channel}, Outgoing(text=channel))
    assert time.monotonic() - started < 0.9


async def test_a_long_pacing_wait_is_handed_back_as_retry_later(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    key = SlackKeys.of(env.keys).pace("sl", "T1", "C1")
    for _ in range(3):  # three other sends booked the next three seconds
        await reserve_slot(env.redis, key, 1.0)
    with pytest.raises(RetryLater) as caught:
        await env.adapter.send(THREAD, Outgoing(text="hi"))
    assert caught.value.retry_after_s > 1.5
    assert fake_slack.messages() == []


# -- threads, workspaces ------------------------------------------------------------------------


async def test_posting_in_a_thread_joins_it(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    threads = env.adapter._sender._threads
    assert not await threads.is_joined("T1", "C1", THREAD["thread_ts"])
    await env.adapter.send(THREAD, Outgoing(text="hi"))
    assert await threads.is_joined("T1", "C1", THREAD["thread_ts"])


async def test_each_workspace_is_answered_with_its_own_token(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await make_slack(client_id="cid", client_secret=Secret("csecret"))
    store = env.adapter._workspaces.store
    for team in ("TA", "TB"):
        ws = fake_slack.add_workspace(team)
        await store.async_save(
            Installation(team_id=team, user_id="UADMIN", bot_token=ws.token, bot_user_id=ws.user_id, bot_id=ws.bot_id)
        )
    await env.adapter.send({**THREAD, "team": "TA"}, Outgoing(text="to A"))
    await env.adapter.send({**THREAD, "team": "TB", "channel": "C2"}, Outgoing(text="to B"))
    assert fake_slack.texts(team_id="TA") == ["to A"] and fake_slack.texts(team_id="TB") == ["to B"]
    with pytest.raises(RecipientGone, match="not installed"):
        await env.adapter.send({**THREAD, "team": "TC"}, Outgoing(text="to nobody"))


# -- working state --------------------------------------------------------------------------------


# A DM answered outside a thread: no thread status there, so the reaction shows the work
# (threads get a status: test_slack_progress.py).
DM = {"team": "T1", "channel": "D1", "reply_to": "1700000000.000100"}


async def test_working_reaction_is_added_then_removed(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    key = ("D1", DM["reply_to"])
    await env.adapter.show_working(DM)
    assert fake_slack.reactions[key] == [WORKING_REACTION]
    await env.adapter.show_working(DM)  # already_reacted is swallowed
    await env.adapter.clear_working(DM)
    assert fake_slack.reactions[key] == []
    await env.adapter.clear_working(DM)  # no_reaction is swallowed


async def test_working_state_never_raises(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, ws = await single(make_slack, fake_slack)
    fake_slack.rate_limit_next("reactions.add", retry_after=3)
    await env.adapter.show_working(DM)
    fake_slack.revoke(ws.token)
    await env.adapter.clear_working(DM)
    await env.adapter.show_working({"team": "T1", "channel": "D1"})  # nothing to react to
    assert len(fake_slack.calls("reactions.add")) == 1


# -- files ----------------------------------------------------------------------------------------


def ocs_attachment(size: int = 11) -> ReplyAttachment:
    return ReplyAttachment(name="report.txt", content_type="text/plain", size=size, content_url="https://ocs.example/files/9/content")


async def test_reply_attachment_is_uploaded_into_the_thread(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    fetched: list[ReplyAttachment] = []

    async def fetch(attachment: ReplyAttachment) -> bytes:
        fetched.append(attachment)
        return b"hello world"

    ws = fake_slack.add_workspace("T1")
    env = await make_slack(bot_token=Secret(ws.token), fetch_ocs_file=fetch)
    file_id = await env.adapter.send(THREAD, Outgoing(attachment=ocs_attachment()))
    (share,) = fake_slack.shared_files
    assert (share.file_id, share.data, share.channel, share.thread_ts) == (file_id, b"hello world", "C1", THREAD["thread_ts"])
    assert share.filename == "report.txt" and fetched == [ocs_attachment()]
    assert [c.method for c in fake_slack.calls() if c.method != "auth.test"] == [
        "files.getUploadURLExternal",
        "upload",
        "files.completeUploadExternal",
    ]


async def test_too_large_attachment_is_posted_as_a_link(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    async def fetch(attachment: ReplyAttachment) -> bytes:
        raise AssertionError("a file this large is not downloaded")

    ws = fake_slack.add_workspace("T1")
    env = await make_slack(bot_token=Secret(ws.token), fetch_ocs_file=fetch)
    await env.adapter.send(THREAD, Outgoing(attachment=ocs_attachment(size=MAX_UPLOAD_BYTES + 1)))
    (text,) = fake_slack.texts()
    assert "<https://ocs.example/files/9/content|report.txt>" in text
    assert fake_slack.shared_files == []


async def test_attachment_that_cannot_be_fetched_from_ocs_is_posted_as_a_link(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    async def fetch(attachment: ReplyAttachment) -> bytes:
        raise AttachmentUnavailable("the file is larger than 1024 bytes")

    ws = fake_slack.add_workspace("T1")
    env = await make_slack(bot_token=Secret(ws.token), fetch_ocs_file=fetch)
    await env.adapter.send(THREAD, Outgoing(attachment=ocs_attachment()))
    (text,) = fake_slack.texts()
    assert "<https://ocs.example/files/9/content|report.txt>" in text
    assert fake_slack.shared_files == []


async def test_user_file_is_downloaded_with_the_bot_token(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, ws = await single(make_slack, fake_slack)
    item = fake_slack.add_file("T1", "photo.png", b"\x89PNG...", mimetype="image/png")
    attachment = Attachment(ref=item["url_private_download"], name="photo.png", content_type="image/png", size=item["size"])
    got = await env.adapter.download(attachment, THREAD)
    assert (got.name, got.content_type, got.data) == ("photo.png", "image/png", b"\x89PNG...")
    assert fake_slack.calls("download")[0].token == ws.token


async def test_sign_in_page_instead_of_the_file_is_refused(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    item = fake_slack.add_file("T-OTHER", "photo.png", b"\x89PNG...", mimetype="image/png")  # our token does not open it
    attachment = Attachment(ref=item["url_private_download"], name="photo.png", content_type="image/png")
    with pytest.raises(AttachmentUnavailable, match="sign-in page"):
        await env.adapter.download(attachment, THREAD)


async def test_bot_token_is_never_sent_off_slack(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    for ref in ("https://evil.example/steal", "http://files.slack.com/x"):
        with pytest.raises(AttachmentUnavailable, match="file host"):
            await env.adapter.download(Attachment(ref=ref, name="x"), THREAD)
    assert fake_slack.calls("download") == []


async def test_oversized_user_file_is_refused_before_download(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    item = fake_slack.add_file("T1", "big.bin", b"x")
    with pytest.raises(AttachmentUnavailable, match="larger"):
        await env.adapter.download(Attachment(ref=item["url_private_download"], name="big.bin", size=10**9), THREAD)
    assert fake_slack.calls("download") == []
