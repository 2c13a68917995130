"""Slack inbound: signatures (Slack's known-answer vector), url_verification, and what every
sample event becomes (docs/PLATFORMS.md §2.1-2.5)."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest

from adapters.slack.inbound import verify_signature
from gateway.core.channel import InboundRequest
from gateway.core.config import Secret
from gateway.core.errors import PayloadInvalid, SignatureInvalid
from gateway.core.models import Attachment, ConversationKey, InboundKind
from tests.adapters._slack import SIGNING_SECRET, MakeEnv, SlackEnv, make_slack
from tests.fakes.slack_api import FakeSlack, fake_slack
from tests.support.samples import load_sample

__all__ = ["fake_slack", "make_slack"]  # fixtures used below


async def env_for(
    make_slack: MakeEnv, fake: FakeSlack, *, user_id: str = "W111", bot_id: str = "B111", **channel: Any
) -> SlackEnv:
    """A single-workspace adapter whose bot is ``user_id``/``bot_id`` (auth.test answers so)."""
    ws = fake.add_workspace("T111", user_id=user_id, bot_id=bot_id)
    return await make_slack(bot_token=Secret(ws.token), **channel)


# -- signatures -----------------------------------------------------------------------------------


def vector_request(*, now: float, body: bytes | None = None) -> InboundRequest:
    vector = load_sample("slack_signed_request_vector.json")
    return InboundRequest(
        channel="sl",
        headers={k.lower(): v for k, v in vector["headers"].items()},
        body=body if body is not None else vector["raw_body"].encode(),
        received_at=now,
    )


def test_slack_known_answer_vector_verifies() -> None:
    vector = load_sample("slack_signed_request_vector.json")
    verify_signature(vector["signing_secret"], vector_request(now=1531420618))


def test_signature_window_is_300_seconds_inclusive() -> None:
    verify_signature(SIGNING_SECRET, vector_request(now=1531420618 + 300))
    with pytest.raises(SignatureInvalid, match="5 minutes"):
        verify_signature(SIGNING_SECRET, vector_request(now=1531420618 + 301))


def test_tampered_body_is_refused() -> None:
    vector = load_sample("slack_signed_request_vector.json")
    with pytest.raises(SignatureInvalid, match="does not match"):
        verify_signature(SIGNING_SECRET, vector_request(now=1531420618, body=(vector["raw_body"] + "------").encode()))


def test_vector_is_stale_on_the_real_clock() -> None:
    with pytest.raises(SignatureInvalid):
        verify_signature(SIGNING_SECRET, vector_request(now=time.time()))


async def test_six_minute_old_timestamp_is_refused(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack)
    request = env.request(load_sample("slack_app_mention.json"), timestamp=int(time.time()) - 360)
    with pytest.raises(SignatureInvalid):
        await env.adapter.verify(request)


async def test_wrong_secret_and_missing_headers_are_refused(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack)
    body = load_sample("slack_app_mention.json")
    with pytest.raises(SignatureInvalid):
        await env.adapter.verify(env.request(body, secret="not-the-secret"))
    unsigned = env.request(body)
    headers = {k: v for k, v in unsigned.headers.items() if k != "x-slack-signature"}
    with pytest.raises(SignatureInvalid, match="missing"):
        await env.adapter.verify(InboundRequest(channel="sl", headers=headers, body=unsigned.body, received_at=time.time()))
    bad_ts = env.request(body, headers={"x-slack-request-timestamp": "yesterday"})
    with pytest.raises(SignatureInvalid, match="not a number"):
        await env.adapter.verify(bad_ts)


async def test_fresh_signed_request_verifies(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack)
    await env.adapter.verify(env.request(load_sample("slack_app_mention.json")))


# -- envelopes ------------------------------------------------------------------------------------


async def test_url_verification_answers_the_challenge(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack)
    sample = load_sample("slack_url_verification.json")
    parsed = await env.adapter.parse(env.request(sample))
    assert parsed.response == {"challenge": sample["challenge"]}
    assert parsed.inbounds == ()


async def test_app_rate_limited_envelope_is_ignored(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack)
    parsed = await env.adapter.parse(env.request(load_sample("slack_app_rate_limited.json")))
    assert parsed.inbounds == () and parsed.response is None


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({"type": "event_callback", "team_id": "T111", "event_id": "Ev1"}).encode(),
        json.dumps({"type": "event_callback", "event_id": "Ev1", "event": {"type": "message"}}).encode(),
        json.dumps({"type": "url_verification"}).encode(),
    ],
    ids=["not-json", "not-an-object", "no-event", "no-team", "no-challenge"],
)
async def test_malformed_bodies_are_payload_invalid(make_slack: MakeEnv, fake_slack: FakeSlack, body: bytes) -> None:
    env = await env_for(make_slack, fake_slack)
    request = InboundRequest(channel="sl", headers={"content-type": "application/json"}, body=body, received_at=time.time())
    with pytest.raises(PayloadInvalid):
        await env.adapter.parse(request)


# -- what the bot answers -------------------------------------------------------------------------


async def test_app_mention_becomes_a_turn_in_its_thread(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack)
    parsed = await env.adapter.parse(env.request(load_sample("slack_app_mention.json")))
    (inbound,) = parsed.inbounds
    ts = "1595926230.009600"
    assert inbound.key == ConversationKey("sl", f"T:T111:C:C111:{ts}")
    assert inbound.event_id == "Ev111"
    assert inbound.kind is InboundKind.MESSAGE
    assert inbound.text == "Hi there!"
    assert inbound.sender_id == "W222"
    assert dict(inbound.route) == {"team": "T111", "enterprise": "E111", "channel": "C111", "reply_to": ts, "thread_ts": ts}
    assert inbound.alias_ids == (f"msg:T111:C111:{ts}",)


async def test_direct_message_is_one_conversation_per_dm(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack)
    (dm,) = (await env.adapter.parse(env.request(load_sample("slack_message_im.json")))).inbounds
    assert dm.key == ConversationKey("sl", "T:T123ABC456:D:D024BE91L")
    assert dm.text == "Hello hello can you hear me?"
    assert "thread_ts" not in dm.route  # a DM is answered in the DM, not in a thread
    (reply,) = (await env.adapter.parse(env.request(load_sample("slack_message_im_thread_reply.json")))).inbounds
    assert reply.key == ConversationKey("sl", "T:T111:D:D111")  # threads inside a DM stay one conversation
    assert reply.route["thread_ts"] == "1726133698.626339"  # ...but the answer goes in that thread


async def test_own_message_is_ignored_by_bot_id_or_user(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    # An app's own chat.postMessage has bot_id + user and no subtype (docs/PLATFORMS.md §2.5).
    sample = load_sample("slack_message_from_bot_user_no_subtype.json")
    sample["event"]["channel_type"] = "im"  # so that only the self check can drop it
    env = await env_for(make_slack, fake_slack, user_id="UB111", bot_id="BOTHER")
    assert (await env.adapter.parse(env.request(sample))).inbounds == ()
    fake_slack.workspaces.clear()
    env = await env_for(make_slack, fake_slack, user_id="UOTHER", bot_id="B999", ignore_other_bots=False)
    assert (await env.adapter.parse(env.request(sample))).inbounds == ()


async def test_other_bots_are_ignored_by_default(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    modern = load_sample("slack_message_from_bot_user_no_subtype.json")
    classic = load_sample("slack_message_bot_message_subtype.json")
    for sample in (modern, classic):
        sample["event"]["channel_type"] = "im"
    env = await env_for(make_slack, fake_slack)
    assert (await env.adapter.parse(env.request(modern))).inbounds == ()
    assert (await env.adapter.parse(env.request(classic))).inbounds == ()


async def test_other_bots_are_answered_when_configured(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    modern = load_sample("slack_message_from_bot_user_no_subtype.json")
    classic = load_sample("slack_message_bot_message_subtype.json")
    for sample in (modern, classic):
        sample["event"]["channel_type"] = "im"
    env = await env_for(make_slack, fake_slack, ignore_other_bots=False)
    (first,) = (await env.adapter.parse(env.request(modern))).inbounds
    (second,) = (await env.adapter.parse(env.request(classic))).inbounds
    assert (first.sender_id, second.sender_id) == ("UB111", "B888")


async def test_without_auth_test_every_bot_message_is_treated_as_our_own(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    fake_slack.fail_next("auth.test", "fatal_error", times=5)  # from start-up on
    env = await env_for(make_slack, fake_slack, ignore_other_bots=False)
    modern = load_sample("slack_message_from_bot_user_no_subtype.json")
    modern["event"]["channel_type"] = "im"
    assert (await env.adapter.parse(env.request(modern))).inbounds == ()  # silence beats a loop
    assert len((await env.adapter.parse(env.request(load_sample("slack_message_im.json")))).inbounds) == 1


async def test_auth_test_is_asked_once_per_process(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack)
    for _ in range(3):
        await env.adapter.parse(env.request(load_sample("slack_message_im.json")))
    assert len(fake_slack.calls("auth.test")) == 1


@pytest.mark.parametrize("subtype", ["message_changed", "message_deleted", "channel_join", "group_join", "channel_topic"])
async def test_edits_deletes_and_joins_are_ignored(make_slack: MakeEnv, fake_slack: FakeSlack, subtype: str) -> None:
    env = await env_for(make_slack, fake_slack)
    sample = load_sample("slack_message_changed.json")
    sample["event"]["subtype"] = subtype
    sample["event"]["channel_type"] = "im"
    sample["event"].pop("hidden")
    sample["event"]["user"] = "U111"
    sample["event"]["text"] = "<@W111> hello"
    assert (await env.adapter.parse(env.request(sample))).inbounds == ()
    assert (await env.adapter.parse(env.request(load_sample("slack_message_changed.json")))).inbounds == ()


async def test_channel_chatter_without_a_mention_is_ignored(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack, user_id="UBOT")
    assert (await env.adapter.parse(env.request(load_sample("slack_message_channels_user.json")))).inbounds == ()


async def test_thread_replies_are_answered_in_threads_the_bot_joined(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack, user_id="UBOT")
    reply = load_sample("slack_message_channel_thread_reply.json")
    assert (await env.adapter.parse(env.request(reply))).inbounds == ()
    root = "1726133698.626339"
    mention = load_sample("slack_app_mention.json")
    mention["event"].update(text="<@UBOT> a question", ts=root, event_ts=root)
    (first,) = (await env.adapter.parse(env.request(mention))).inbounds
    (follow_up,) = (await env.adapter.parse(env.request(reply))).inbounds
    assert follow_up.key == first.key == ConversationKey("sl", f"T:T111:C:C111:{root}")
    assert follow_up.route["thread_ts"] == root
    assert follow_up.route["reply_to"] == "1726133700.887259"


async def test_thread_broadcast_in_a_joined_thread_is_answered(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack, user_id="UBOT")
    sample = load_sample("slack_message_thread_broadcast.json")
    assert (await env.adapter.parse(env.request(sample))).inbounds == ()
    await env.adapter._parser._threads.join("T111", "C111", "1633663824.000500")
    (inbound,) = (await env.adapter.parse(env.request(sample))).inbounds
    assert inbound.key.conversation == "T:T111:C:C111:1633663824.000500"


async def test_mention_via_app_mention_and_message_events_is_one_message(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    # With app_mention and message.channels both subscribed, one message arrives twice under
    # two event ids (docs/PLATFORMS.md §2.4): same alias, same conversation, same words.
    env = await env_for(make_slack, fake_slack)
    mention = load_sample("slack_app_mention.json")
    as_message = copy.deepcopy(mention)
    as_message["event"].update(type="message", channel_type="channel")
    as_message["event_id"] = "Ev999"
    (a,) = (await env.adapter.parse(env.request(mention))).inbounds
    (b,) = (await env.adapter.parse(env.request(as_message))).inbounds
    assert a.event_id != b.event_id
    assert a.alias_ids == b.alias_ids and a.key == b.key and a.text == b.text


async def test_retried_delivery_is_parsed_with_the_same_event_id(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    # The edge's dedup decides; the adapter never drops a retry (the first try may have got a 503).
    env = await env_for(make_slack, fake_slack)
    sample = load_sample("slack_app_mention.json")
    (first,) = (await env.adapter.parse(env.request(sample))).inbounds
    retry = env.request(sample, headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    (again,) = (await env.adapter.parse(retry)).inbounds
    assert again.event_id == first.event_id and again.alias_ids == first.alias_ids


async def test_file_share_becomes_attachments(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack)
    sample = load_sample("slack_message_file_share.json")
    sample["event"].update(channel="D111", channel_type="im")
    (inbound,) = (await env.adapter.parse(env.request(sample))).inbounds
    assert inbound.text == "Hi there!"
    assert inbound.attachments == (
        Attachment(
            ref="https://files.slack.com/files-pri/T111-F111/download/file.png",
            name="file.png",
            content_type="image/png",
            size=92582,
        ),
    )


async def test_reset_keyword_after_the_mention_is_a_reset(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack)
    sample = load_sample("slack_app_mention.json")
    sample["event"]["text"] = "<@W111>   RESET "
    (inbound,) = (await env.adapter.parse(env.request(sample))).inbounds
    assert inbound.kind is InboundKind.RESET
    sample["event"]["text"] = "<@W111> reset please"
    (inbound,) = (await env.adapter.parse(env.request(sample))).inbounds
    assert inbound.kind is InboundKind.MESSAGE


async def test_per_channel_option_gives_one_conversation_per_channel(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack, channel_conversation="per_channel")
    (inbound,) = (await env.adapter.parse(env.request(load_sample("slack_app_mention.json")))).inbounds
    assert inbound.key == ConversationKey("sl", "T:T111:C:C111")
    assert inbound.route["thread_ts"] == "1595926230.009600"  # still answered in the thread


async def test_slack_markup_is_decoded_for_the_bot(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack)
    sample = load_sample("slack_app_mention.json")
    sample["event"]["text"] = "<@W111> see <https://x.org/a?b=1&amp;c=2|the doc> in <#C9|general> &lt;3"
    (inbound,) = (await env.adapter.parse(env.request(sample))).inbounds
    assert inbound.text == "see the doc (https://x.org/a?b=1&c=2) in #general <3"


async def test_a_bare_mention_is_not_a_turn(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack)
    sample = load_sample("slack_app_mention.json")
    sample["event"]["text"] = "<@W111>"
    assert (await env.adapter.parse(env.request(sample))).inbounds == ()


async def test_revocation_events_produce_no_turn(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack)
    for event in ({"type": "app_uninstalled"}, {"type": "tokens_revoked", "tokens": {"bot": ["W111"]}}):
        body = {"type": "event_callback", "team_id": "T111", "event_id": "EvX", "event": event}
        assert (await env.adapter.parse(env.request(body))).inbounds == ()
