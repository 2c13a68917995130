"""Replies as Block Kit ``markdown`` blocks: what reaches the fake Web API (the block with the
reply's Markdown, the mrkdwn conversion as the ``text`` fallback) and how long replies are split
within Slack's 12,000-character limit for markdown blocks."""

from __future__ import annotations

from adapters.slack.format import MAX_MARKDOWN_CHARS, markdown_for_blocks
from adapters.slack.outbound import render
from gateway.core.config import Secret
from gateway.core.models import Reply
from tests.adapters._slack import MakeEnv, make_slack
from tests.fakes.slack_api import FakeSlack, fake_slack

__all__ = ["fake_slack", "make_slack"]

THREAD = {"team": "T1", "channel": "C1", "thread_ts": "1700000000.000100", "reply_to": "1700000000.000100"}


async def test_reply_goes_out_as_a_markdown_block_with_the_mrkdwn_as_text(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    ws = fake_slack.add_workspace("T1")
    env = await make_slack(bot_token=Secret(ws.token))
    markdown = "## Plan\n\n1. **first** step\n2. read [the docs](https://x.org)\n   - nested\n\n```\nif a < b:\n```"
    (part,) = env.adapter.render(Reply(text=markdown))
    await env.adapter.send(THREAD, part)
    (call,) = fake_slack.calls("chat.postMessage")
    assert call.params["blocks"] == [{"type": "markdown", "text": markdown}]
    assert call.params["text"] == (
        "*Plan*\n\n1. *first* step\n2. read <https://x.org|the docs>\n    ◦ nested\n\n```\nif a &lt; b:\n```"
    )
    assert (call.params["channel"], call.params["thread_ts"]) == ("C1", "1700000000.000100")


def test_a_table_reaches_the_markdown_block_as_an_aligned_monospace_block() -> None:
    markdown = "Scores:\n\n| name | score |\n|---|---|\n| Ada | 10 |\n| Bo | 7 |"
    assert markdown_for_blocks(markdown) == [
        "Scores:",
        "```\nname | score\n-----+------\nAda  | 10\nBo   | 7\n```",
    ]


async def test_long_reply_is_split_into_messages_within_the_markdown_block_limit(
    make_slack: MakeEnv, fake_slack: FakeSlack
) -> None:
    ws = fake_slack.add_workspace("T1")
    env = await make_slack(bot_token=Secret(ws.token))
    paragraphs = [f"**Part {i}** " + "lorem ipsum " * 100 for i in range(25)]  # ~30,000 characters
    parts = env.adapter.render(Reply(text="\n\n".join(paragraphs)))
    assert len(parts) == 3
    for n, part in enumerate(parts):
        # One channel each: pacing is not what this test is about.
        await env.adapter.send({"team": "T1", "channel": f"D{n}"}, part)
    sent = [fake_slack.messages(channel=f"D{n}")[0].params for n in range(len(parts))]
    blocks = [params["blocks"] for params in sent]
    assert all(len(b) == 1 and b[0]["type"] == "markdown" and len(b[0]["text"]) <= MAX_MARKDOWN_CHARS for b in blocks)
    # Split between paragraphs only, in order, nothing lost.
    assert "\n\n".join(b[0]["text"] for b in blocks) == "\n\n".join(p.strip() for p in paragraphs)
    assert all(params["text"].startswith(f"*Part {i}*") for params, i in zip(sent, (0, 9, 18), strict=True))


def test_a_code_block_longer_than_a_message_stays_fenced_in_every_part() -> None:
    code = "\n".join(f"line {i} = {'x' * 40}" for i in range(600))  # ~30,000 characters
    parts = [part.hints["markdown"] for part in render(Reply(text=f"```python\n{code}\n```"))]
    assert len(parts) >= 3
    assert all(p.startswith("```\n") and p.endswith("\n```") and len(p) <= MAX_MARKDOWN_CHARS for p in parts)
    assert "\n".join(p[4:-4] for p in parts) == code
