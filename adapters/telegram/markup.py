"""OCS Markdown → a flat list of styled text runs, the form ``format.py`` splits and serialises.

Why runs instead of an HTML string: a reply longer than Telegram's 4096 limit must be cut, and a
cut inside ``<b>…</b>`` or ``&amp;`` makes Telegram refuse the whole message (docs/PLATFORMS.md §1.5,
"A bad escape makes the whole send fail with 400"). A run carries its text raw and the full stack
of tags around it, so any cut between two characters can close and reopen the tags cleanly, and
escaping happens only when a chunk is written out.

Only the tags Telegram's HTML parse mode accepts are produced (docs/PLATFORMS.md §1.5): ``b i s code pre
a blockquote``. Headings become bold lines, lists become "• " / "1. " lines, tables become
"a | b" lines, and raw HTML from the model is shown as text.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

__all__ = ["Run", "Tag", "markdown_to_runs"]


@dataclass(frozen=True, slots=True)
class Tag:
    """An HTML element as its opening and closing text; equal tags merge when adjacent."""

    open: str
    close: str


@dataclass(frozen=True, slots=True)
class Run:
    """A piece of text and every tag around it, outermost first.

    ``plain_only`` text appears only in the plain-text twin (a link's URL, which the HTML keeps
    in ``href``); ``is_break`` marks the newlines between blocks, the preferred places to cut.
    """

    text: str
    tags: tuple[Tag, ...] = ()
    plain_only: bool = False
    is_break: bool = False


BOLD = Tag("<b>", "</b>")
ITALIC = Tag("<i>", "</i>")
STRIKE = Tag("<s>", "</s>")
CODE = Tag("<code>", "</code>")
BLOCKQUOTE = Tag("<blockquote>", "</blockquote>")
#: Tags inside which whitespace is content (never trimmed at a chunk edge).
VERBATIM_PREFIXES = ("<code", "<pre")

#: Link schemes Telegram opens; anything else (javascript:, data:) is shown as text only.
_LINK_SCHEMES = frozenset({"http", "https", "tg", "mailto"})
_INLINE_TAGS = {"strong_open": BOLD, "em_open": ITALIC, "s_open": STRIKE}
_INLINE_CLOSE = frozenset({"strong_close", "em_close", "s_close"})

_parser = MarkdownIt("commonmark").enable(["strikethrough", "table"])


def markdown_to_runs(markdown: str) -> list[Run]:
    """Parse OCS's Markdown into styled runs (never raises: anything odd is kept as text)."""
    builder = _Builder()
    builder.blocks(_parser.parse(markdown))
    return builder.runs


def _pre(language: str) -> Tag:
    if language:
        cls = html.escape(f"language-{language}", quote=True)
        return Tag(f'<pre><code class="{cls}">', "</code></pre>")
    return Tag("<pre>", "</pre>")


def _link(href: str) -> Tag | None:
    scheme = urlsplit(href).scheme.lower()
    if scheme not in _LINK_SCHEMES:
        return None
    return Tag(f'<a href="{html.escape(href, quote=True)}">', "</a>")


@dataclass(slots=True)
class _ListLevel:
    ordered: bool
    next_number: int = 1


@dataclass(slots=True)
class _Builder:
    runs: list[Run] = field(default_factory=list)
    block_tags: list[Tag] = field(default_factory=list)
    lists: list[_ListLevel] = field(default_factory=list)
    cells_in_row: int = 0

    # -- emitting -------------------------------------------------------------------------------

    def text(self, text: str, inline: tuple[Tag, ...] = (), *, plain_only: bool = False) -> None:
        if text:
            self.runs.append(Run(text, (*self.block_tags, *inline), plain_only=plain_only))

    def brk(self, newlines: int) -> None:
        """End a block; consecutive ends merge into the larger gap, outside the inner tags."""
        tags = tuple(self.block_tags)
        if not self.runs:
            return  # nothing before it: a leading gap would only be trimmed later
        last = self.runs[-1]
        if last.is_break:
            common = _common_prefix(last.tags, tags)
            gap = max(len(last.text), newlines)
            self.runs[-1] = Run("\n" * gap, common, is_break=True)
        else:
            self.runs.append(Run("\n" * newlines, tags, is_break=True))

    # -- blocks ---------------------------------------------------------------------------------

    def blocks(self, tokens: list[Token]) -> None:
        bold_block = False  # inside a heading or a table header cell
        for token in tokens:
            kind = token.type
            if kind in ("heading_open", "th_open"):
                bold_block = True
            if kind in ("heading_close", "th_close"):
                bold_block = False
            if kind == "heading_close":
                self.brk(2)
            elif kind == "paragraph_close":
                # Hidden paragraphs are the items of a tight list: one line each, not a gap.
                self.brk(1 if token.hidden else 2)
            elif kind in ("bullet_list_open", "ordered_list_open"):
                start = token.attrGet("start")
                self.lists.append(_ListLevel(kind == "ordered_list_open", int(start) if start else 1))
                self.brk(1)
            elif kind in ("bullet_list_close", "ordered_list_close"):
                self.lists.pop()
                self.brk(1 if self.lists else 2)
            elif kind == "list_item_open":
                self.brk(1)
                self.text(self._bullet())
            elif kind == "list_item_close":
                self.brk(1)
            elif kind == "blockquote_open":
                self.brk(2)
                self.block_tags.append(BLOCKQUOTE)
            elif kind == "blockquote_close":
                self.brk(2)
                self.block_tags.pop()
                self.brk(2)
            elif kind in ("fence", "code_block"):
                self.text(token.content.rstrip("\n"), (_pre(token.info.strip().split(" ")[0]),))
                self.brk(2)
            elif kind == "hr":
                self.text("———")
                self.brk(2)
            elif kind == "html_block":
                self.text(token.content.rstrip("\n"))
                self.brk(2)
            elif kind == "tr_open":
                self.cells_in_row = 0
            elif kind in ("th_open", "td_open"):
                if self.cells_in_row:
                    self.text(" | ")
                self.cells_in_row += 1
            elif kind == "tr_close":
                self.brk(1)
            elif kind == "table_close":
                self.brk(2)
            elif kind == "inline":
                self.inline(token.children or [], (BOLD,) if bold_block else ())

    def _bullet(self) -> str:
        level = self.lists[-1]
        indent = "  " * (len(self.lists) - 1)
        if not level.ordered:
            return f"{indent}• "
        number = level.next_number
        level.next_number += 1
        return f"{indent}{number}. "

    # -- inline ---------------------------------------------------------------------------------

    def inline(self, children: list[Token], base: tuple[Tag, ...]) -> None:
        stack: list[Tag] = list(base)
        links: list[tuple[str, int]] = []  # (href, index of the first run of its label)
        for child in children:
            kind = child.type
            if kind in ("text", "html_inline"):
                self.text(child.content, tuple(stack))
            elif kind in ("softbreak", "hardbreak"):
                self.text("\n", tuple(stack))
            elif kind in _INLINE_TAGS:
                stack.append(_INLINE_TAGS[kind])
            elif kind in _INLINE_CLOSE:
                stack.pop()
            elif kind == "code_inline":
                self.text(child.content, (*stack, CODE))
            elif kind == "link_open":
                href = str(child.attrGet("href") or "")
                tag = _link(href)
                stack.append(tag or Tag("", ""))
                links.append((href, len(self.runs)))
            elif kind == "link_close" and links:
                stack.pop()
                href, first = links.pop()
                self._url_for_plain(href, first)
            elif kind == "image":
                # Telegram cannot inline an image in a text message: show the alt text as a link.
                src = str(child.attrGet("src") or "")
                tag = _link(src)
                first = len(self.runs)
                self.text(child.content or src, (*stack, tag) if tag else tuple(stack))
                self._url_for_plain(src, first)

    def _url_for_plain(self, href: str, first_label_run: int) -> None:
        """After a link's label, put its URL in the plain twin (unless the label is the URL)."""
        label = "".join(run.text for run in self.runs[first_label_run:])
        if href and label.strip() != href:
            self.text(f" ({href})", plain_only=True)


def _common_prefix(a: tuple[Tag, ...], b: tuple[Tag, ...]) -> tuple[Tag, ...]:
    size = 0
    for left, right in zip(a, b):
        if left != right:
            break
        size += 1
    return a[:size]
