"""Markdown → Slack mrkdwn, splitting long replies, and Slack text → plain text."""

from __future__ import annotations

import pytest

from adapters.slack.format import (
    MAX_MESSAGE_CHARS,
    escape,
    markdown_to_mrkdwn,
    mrkdwn_to_plain,
    slack_to_text,
    split_message,
)
from adapters.slack.outbound import render
from gateway.core.models import Outgoing, Reply, ReplyAttachment


def mrkdwn(markdown: str) -> str:
    return "\n\n".join(markdown_to_mrkdwn(markdown))


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("~~gone~~", "~gone~"),
        ("`a < b`", "`a &lt; b`"),
        ("[the docs](https://x.org/a?b=1&c=2)", "<https://x.org/a?b=1&c=2|the docs>"),
        ("<https://x.org>", "<https://x.org>"),
        ("[odd|label](https://x.org/>)", "<https://x.org/%3E|odd|label>"),
        ("[relative](/path)", "relative"),
        ("![a cat](https://x.org/cat.png)", "<https://x.org/cat.png|a cat>"),
        ("# Heading", "*Heading*"),
        ("## Heading with **bold**", "*Heading with bold*"),
        ("Tom & Jerry <3 >_<", "Tom &amp; Jerry &lt;3 &gt;_&lt;"),
        ("line one\nline two", "line one\nline two"),
        ("> quoted\n> twice", "> quoted\n> twice"),
        ("---", "───────────"),
    ],
)
def test_markdown_becomes_mrkdwn(markdown: str, expected: str) -> None:
    assert mrkdwn(markdown) == expected


def test_lists_are_bullets_and_numbers_with_nesting() -> None:
    markdown = "- one\n- two\n  1. first\n  2. second\n     - deep\n\n3. three\n4. four"
    assert mrkdwn(markdown) == (
        "• one\n• two\n    1. first\n    2. second\n        • deep\n\n3. three\n4. four"
    )


def test_code_blocks_keep_their_text_escaped_without_language() -> None:
    assert mrkdwn("```python\nif a < b:\n    pass\n```") == "```\nif a &lt; b:\n    pass\n```"


def test_tables_become_aligned_monospace() -> None:
    assert mrkdwn("| a | bb |\n|---|---|\n| 1 | 2 |") == "```\na | bb\n--+---\n1 | 2\n```"


def test_escape_handles_ampersand_first() -> None:
    assert escape("&lt;") == "&amp;lt;"


def test_short_reply_is_one_message() -> None:
    assert split_message(["one", "two"]) == ["one\n\ntwo"]


def test_long_reply_splits_on_paragraph_boundaries_in_order() -> None:
    paragraphs = [f"Paragraph {i}: " + "word " * 150 for i in range(12)]
    messages = split_message(markdown_to_mrkdwn("\n\n".join(paragraphs)))
    assert len(messages) > 1
    assert all(len(m) <= MAX_MESSAGE_CHARS for m in messages)
    rejoined = "\n\n".join(messages)
    assert rejoined == "\n\n".join(p.strip() for p in paragraphs)  # nothing lost, nothing reordered
    for message in messages:
        assert message.startswith("Paragraph")  # every cut is between paragraphs


def test_a_paragraph_longer_than_a_message_splits_between_words() -> None:
    text = "word " * 2000
    messages = split_message(markdown_to_mrkdwn(text), limit=500)
    assert all(len(m) <= 500 for m in messages)
    assert " ".join(messages).split() == text.split()


def test_a_long_code_block_stays_fenced_in_every_part() -> None:
    code = "\n".join(f"line {i} = {i} < {i + 1}" for i in range(400))
    messages = split_message(markdown_to_mrkdwn(f"```\n{code}\n```"), limit=1000)
    assert len(messages) > 1
    for message in messages:
        assert message.startswith("```\n") and message.endswith("\n```") and len(message) <= 1000
    body = "\n".join(m[4:-4] for m in messages)
    assert body == code.replace("<", "&lt;")


def test_a_word_longer_than_a_message_is_cut_outside_entities() -> None:
    word = "a&amp;" * 100
    pieces = split_message([word], limit=64)
    assert "".join(pieces) == word
    assert all(len(p) <= 64 and not p.endswith(("&", "&a", "&am", "&amp")) for p in pieces)


def test_render_makes_text_parts_then_one_part_per_attachment() -> None:
    attachment = ReplyAttachment(name="report.pdf", content_type="application/pdf", size=10, content_url="https://ocs/x")
    parts = render(Reply(text="**Hi** [there](https://x.org)", attachments=(attachment,)))
    assert parts == [
        Outgoing(text="*Hi* <https://x.org|there>", plain="Hi there (https://x.org)",
                 hints={"markdown": "**Hi** [there](https://x.org)"}),  # the markdown block (test_slack_blocks.py)
        Outgoing(attachment=attachment),
    ]


def test_render_of_an_empty_reply_is_nothing_but_attachments() -> None:
    assert render(Reply(text="  ")) == []


def test_plain_text_drops_the_markup() -> None:
    assert mrkdwn_to_plain("*bold* _it_ ~s~ `c` &lt;b&gt;") == "bold it s `c` <b>"


@pytest.mark.parametrize(
    ("slack", "plain"),
    [
        ("<@UBOT> hello", "hello"),
        ("hi <@U123>", "hi @U123"),
        ("hi <@U123|ada>", "hi @ada"),
        ("<!here> look", "@here look"),
        ("<!subteam^S1|@devs> ping", "@devs ping"),
        ("<mailto:a@b.org|a@b.org>", "a@b.org"),
        ("<https://x.org|https://x.org>", "https://x.org"),
        ("<https://x.org>", "https://x.org"),
        ("a &amp;lt; b", "a &lt; b"),
    ],
)
def test_slack_text_is_decoded_for_the_bot(slack: str, plain: str) -> None:
    assert slack_to_text(slack, drop_user="UBOT") == plain
