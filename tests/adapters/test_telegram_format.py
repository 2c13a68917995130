"""Markdown → Telegram HTML chunks: tags, escaping, and splitting at 4096 UTF-16 units."""

from __future__ import annotations

import re

import pytest

from adapters.telegram.format import TEXT_LIMIT_UTF16, Chunk, render_markdown, utf16_len
from tests.fakes.telegram_api import telegram_html_text


def one(markdown: str) -> Chunk:
    chunks = render_markdown(markdown)
    assert len(chunks) == 1, chunks
    return chunks[0]


def assert_sendable(chunks: list[Chunk], limit: int) -> None:
    """Each chunk is HTML Telegram accepts, and both it and its plain twin fit the limit."""
    for chunk in chunks:
        shown = telegram_html_text(chunk.html)  # raises like Telegram's 400 on bad HTML
        assert 0 < utf16_len(shown) <= limit
        assert 0 < utf16_len(chunk.plain) <= limit


def words(text: str) -> list[str]:
    return re.findall(r"\S+", text)


def test_markdown_styles_become_telegram_tags() -> None:
    chunk = one("# Title\n\n**bold** _it_ ~~gone~~ `x()` [docs](https://example.com/a?b=1&c=2)")
    assert chunk.html == (
        "<b>Title</b>\n\n<b>bold</b> <i>it</i> <s>gone</s> <code>x()</code> "
        '<a href="https://example.com/a?b=1&amp;c=2">docs</a>'
    )
    assert chunk.plain == "Title\n\nbold it gone x() docs (https://example.com/a?b=1&c=2)"


def test_special_characters_and_raw_html_are_escaped() -> None:
    chunk = one("if a < b && c > d then <script>alert(1)</script>")
    assert chunk.html == "if a &lt; b &amp;&amp; c &gt; d then &lt;script&gt;alert(1)&lt;/script&gt;"
    assert chunk.plain == "if a < b && c > d then <script>alert(1)</script>"
    assert_sendable([chunk], TEXT_LIMIT_UTF16)


def test_code_block_keeps_indentation_and_language() -> None:
    chunk = one("Run this:\n\n```python\nif x:\n    print(1 < 2)\n```")
    assert chunk.html == 'Run this:\n\n<pre><code class="language-python">if x:\n    print(1 &lt; 2)</code></pre>'


def test_lists_quotes_and_tables_render_as_lines() -> None:
    chunk = one("Steps:\n\n1. one\n2. two\n   - sub\n\n> quoted\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert chunk.plain == "Steps:\n\n1. one\n2. two\n  • sub\n\nquoted\n\na | b\n1 | 2"
    assert "<blockquote>quoted</blockquote>" in chunk.html
    assert "<b>a</b> | <b>b</b>" in chunk.html


def test_link_with_a_scheme_telegram_cannot_open_is_plain_text() -> None:
    chunk = one("[files](ftp://example.com/x)")
    assert "<a " not in chunk.html
    assert chunk.html == "files"


def test_reply_without_text_has_no_chunks() -> None:
    assert render_markdown("") == []
    assert render_markdown("\n\n   \n") == []


def test_short_reply_is_one_chunk() -> None:
    assert len(render_markdown("hello " * 600)) == 1  # 3600 characters


def test_short_intro_shares_a_message_with_the_start_of_a_huge_paragraph() -> None:
    chunks = render_markdown("Intro.\n\n" + "word " * 1000)  # the paragraph needs 2 messages anyway
    assert len(chunks) == 2
    assert chunks[0].plain.startswith("Intro.\n\nword word")


def test_long_reply_splits_between_paragraphs_in_order() -> None:
    paragraphs = [f"Paragraph {n}. " + "word " * 190 for n in range(12)]  # ~970 characters each
    chunks = render_markdown("\n\n".join(paragraphs))
    assert len(chunks) == 3
    assert_sendable(chunks, TEXT_LIMIT_UTF16)
    assert words(" ".join(c.plain for c in chunks)) == words(" ".join(paragraphs))
    for chunk in chunks:  # every cut fell between paragraphs
        assert chunk.plain.startswith("Paragraph") and chunk.plain.endswith("word")


def test_long_paragraph_splits_after_a_sentence() -> None:
    text = " ".join(f"Sentence number {n} is here." for n in range(40))
    chunks = render_markdown(text, limit=200)
    assert len(chunks) > 1
    assert_sendable(chunks, 200)
    assert all(chunk.plain.endswith("here.") for chunk in chunks)
    assert words(" ".join(c.plain for c in chunks)) == words(text)


def test_limit_counts_utf16_units_so_emoji_count_twice() -> None:
    text = "😂" * 3000  # 3000 characters, 6000 UTF-16 units, one "word"
    chunks = render_markdown(text)
    assert [utf16_len(c.plain) for c in chunks] == [4096, 6000 - 4096]
    assert "".join(c.plain for c in chunks) == text  # no emoji cut in half


def test_word_longer_than_the_limit_is_cut_hard() -> None:
    chunks = render_markdown("x" * 250, limit=100)
    assert [len(c.plain) for c in chunks] == [100, 100, 50]


def test_a_cut_inside_bold_closes_and_reopens_the_tag() -> None:
    chunks = render_markdown("**" + "strong words here. " * 20 + "end**", limit=100)
    assert len(chunks) > 1
    assert_sendable(chunks, 100)
    assert all(c.html.startswith("<b>") and c.html.endswith("</b>") for c in chunks)


def test_a_cut_never_falls_inside_an_escape() -> None:
    chunks = render_markdown("&" * 150 + " " + "<" * 150, limit=100)
    assert_sendable(chunks, 100)
    shown = "".join(telegram_html_text(c.html) for c in chunks)
    assert shown.replace(" ", "") == "&" * 150 + "<" * 150


def test_mixed_document_chunks_are_all_valid_html() -> None:
    block = (
        "## Heading\n\nSome **bold and _nested italic_ text** with `code` and a "
        "[link](https://example.com/path?q=1&r=2).\n\n- item one\n- item two with **bold**\n\n"
        "> a quote that goes on for a while, with <angle> brackets & ampersands.\n\n"
        "```\ncode line 1\n    code line 2 < 3\n```\n\n"
    )
    for limit in (60, 150, 400, TEXT_LIMIT_UTF16):
        chunks = render_markdown(block * 15, limit=limit)
        assert_sendable(chunks, limit)
        shown = " ".join(telegram_html_text(c.html) for c in chunks)
        assert words(shown).count("Heading") == 15


def test_plain_twin_fits_even_when_links_make_it_longer() -> None:
    text = " ".join(f"[site {n}](https://example.com/{'x' * 40}/{n})" for n in range(30))
    chunks = render_markdown(text, limit=300)
    assert_sendable(chunks, 300)
    assert "https://example.com/" in chunks[0].plain


@pytest.mark.parametrize("limit", [0, -5])
def test_limit_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError):
        render_markdown("hi", limit=limit)
