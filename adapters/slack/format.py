"""Text both ways between OCS's Markdown and Slack's mrkdwn.

Slack does not speak Markdown in ``text``: bold is ``*x*``, italic ``_x_``, strike ``~x~``, links
``<url|label>``, there are no headings, lists or tables, and ``&``, ``<`` and ``>`` must be
escaped as HTML entities because ``<...>`` is Slack's own markup (docs/PLATFORMS.md §2.6; Slack's
"Formatting text for app surfaces" page). We parse the Markdown with markdown-it-py (a project
dependency already) and write mrkdwn ourselves: that is one tree walk, where a regex chain breaks on
nesting and code spans.

Long replies are split on paragraph boundaries into messages of at most ``MAX_MESSAGE_CHARS``:
Slack accepts 40,000 characters but truncates and folds long messages ("Show more"), and a section
block is capped at 3,000, so 3,000 is the default for mrkdwn on its own.

Replies go out as Block Kit ``markdown`` blocks, which take standard Markdown and let Slack render
headings, nested and numbered lists, labelled links and code as its own apps do
(https://docs.slack.dev/reference/block-kit/blocks/markdown-block); the mrkdwn conversion above
becomes the message's ``text``, which notifications, screen readers and old clients show.
``markdown_for_blocks`` keeps the reply's Markdown as written, block by block, except for what
the markdown block does not list among what it renders: tables become an aligned monospace
block, as in mrkdwn. Slack caps the markdown blocks of one message at 12,000 characters in total
(``MAX_MARKDOWN_CHARS``); longer replies are split on block boundaries like mrkdwn ones.
"""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

__all__ = [
    "MAX_MARKDOWN_CHARS",
    "MAX_MESSAGE_CHARS",
    "escape",
    "markdown_for_blocks",
    "markdown_to_mrkdwn",
    "mrkdwn_to_plain",
    "slack_to_text",
    "split_message",
]

#: The longest message we post; longer replies become several messages, in order.
MAX_MESSAGE_CHARS = 3000
#: Slack's cumulative limit for the markdown blocks of one message (markdown block reference).
MAX_MARKDOWN_CHARS = 12_000

_MD = MarkdownIt("commonmark").enable("strikethrough").enable("table")
_FENCE = "```"
_SAFE_SCHEMES = ("http://", "https://", "mailto:")


def escape(text: str) -> str:
    """Escape the three characters Slack reserves for its own markup (``&`` first)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def markdown_to_mrkdwn(markdown: str) -> list[str]:
    """Render Markdown as mrkdwn, one string per top-level block (paragraph, list, code...)."""
    root = SyntaxTreeNode(_MD.parse(markdown))
    return [text for text in (_block(node, 0) for node in root.children) if text.strip()]


def markdown_for_blocks(markdown: str) -> list[str]:
    """The Markdown a ``markdown`` block should get, one string per top-level block: each block's
    own source lines, code fences normalised (so a split code block stays fenced) and tables
    drawn in monospace, since the markdown block does not render tables."""
    lines = markdown.split("\n")
    out: list[str] = []
    for node in SyntaxTreeNode(_MD.parse(markdown)).children:
        if node.type in ("fence", "code_block"):
            text = f"{_FENCE}\n{node.content.rstrip(chr(10))}\n{_FENCE}"
        elif node.type == "table":
            text = f"{_FENCE}\n{_table_text(node)}\n{_FENCE}"
        elif node.map is not None:
            start, end = node.map
            text = "\n".join(lines[start:end]).lstrip("\n").rstrip()
        else:
            continue
        if text.strip():
            out.append(text)
    return out


def split_message(blocks: list[str], limit: int = MAX_MESSAGE_CHARS) -> list[str]:
    """Pack blocks into messages of at most ``limit`` characters, splitting only between blocks,
    then between lines, then between words; a code block split in two stays fenced in both."""
    return _join([piece for block in blocks for piece in _fit(block, limit)], "\n\n", limit)


# -- blocks ---------------------------------------------------------------------------------------


def _block(node: SyntaxTreeNode, depth: int) -> str:
    kind = node.type
    if kind == "paragraph":
        return _inline_children(node)
    if kind == "heading":
        # Slack has no headings; a bold line is what Slack's own apps use.
        return f"*{_inline_children(node, in_bold=True)}*"
    if kind in ("bullet_list", "ordered_list"):
        return _list(node, depth)
    if kind == "blockquote":
        inner = "\n".join(_block(child, depth) for child in node.children)
        return "\n".join(f"> {line}" if line else ">" for line in inner.split("\n"))
    if kind in ("fence", "code_block"):
        return f"{_FENCE}\n{escape(node.content.rstrip(chr(10)))}\n{_FENCE}"
    if kind == "table":
        return _table(node)
    if kind == "hr":
        return "───────────"
    if kind == "html_block":
        return escape(node.content.rstrip("\n"))
    return "\n".join(_block(child, depth) for child in node.children)


def _list(node: SyntaxTreeNode, depth: int) -> str:
    number = int(str(node.attrs.get("start", 1)))
    indent = "    " * depth
    lines: list[str] = []
    for item in node.children:
        marker = f"{number}." if node.type == "ordered_list" else ("•" if depth % 2 == 0 else "◦")
        number += 1
        parts = [_block(child, depth + 1) for child in item.children]
        body = "\n".join(part for part in parts if part)
        first, _, rest = body.partition("\n")
        lines.append(f"{indent}{marker} {first}")
        # Nested lists carry their own indent; continuation lines of the item get ours.
        for line in rest.split("\n") if rest else ():
            lines.append(line if line.startswith(indent + "    ") else f"{indent}   {line}")
    return "\n".join(lines)


def _table(node: SyntaxTreeNode) -> str:
    # No tables in mrkdwn: an aligned monospace block keeps the columns readable.
    return f"{_FENCE}\n{escape(_table_text(node))}\n{_FENCE}"


def _table_text(node: SyntaxTreeNode) -> str:
    rows = [[_plain_inline(cell) for cell in tr.children] for section in node.children for tr in section.children]
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows)))]
    lines = [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    if len(lines) > 1:
        lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


# -- inline ---------------------------------------------------------------------------------------


def _inline_children(node: SyntaxTreeNode, *, in_bold: bool = False) -> str:
    return "".join(_inline(child, in_bold) for child in node.children)


def _inline(node: SyntaxTreeNode, in_bold: bool) -> str:
    kind = node.type
    if kind == "inline":
        return _inline_children(node, in_bold=in_bold)
    if kind == "text":
        return escape(node.content)
    if kind in ("softbreak", "hardbreak"):
        return "\n"
    if kind == "code_inline":
        return f"`{escape(node.content)}`"
    if kind == "strong":
        inner = _inline_children(node, in_bold=True)
        return inner if in_bold else f"*{inner}*"
    if kind == "em":
        return f"_{_inline_children(node, in_bold=in_bold)}_"
    if kind == "s":
        return f"~{_inline_children(node, in_bold=in_bold)}~"
    if kind == "link":
        return _link(str(node.attrs.get("href", "")), _inline_children(node, in_bold=in_bold))
    if kind == "image":
        return _link(str(node.attrs.get("src", "")), escape(_plain_inline(node)) or "image")
    if kind == "html_inline":
        return escape(node.content)
    return _inline_children(node, in_bold=in_bold)


def _link(url: str, label: str) -> str:
    if not url.startswith(_SAFE_SCHEMES):
        return label  # relative or javascript: links have nowhere to go in Slack
    # "|" and ">" end the URL part of <url|label>; percent-encode them (and "<").
    safe_url = url.replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    if not label or label == escape(url):
        return f"<{safe_url}>"
    return f"<{safe_url}|{label}>"


def _plain_inline(node: SyntaxTreeNode) -> str:
    if node.type in ("text", "code_inline"):
        return node.content
    if node.type in ("softbreak", "hardbreak"):
        return " "
    return "".join(_plain_inline(child) for child in node.children)


# -- splitting ------------------------------------------------------------------------------------


def _fit(block: str, limit: int) -> list[str]:
    if len(block) <= limit:
        return [block]
    if block.startswith(_FENCE + "\n") and block.endswith("\n" + _FENCE):
        body = block[len(_FENCE) + 1 : -len(_FENCE) - 1]
        room = limit - 2 * (len(_FENCE) + 1)
        return [f"{_FENCE}\n{piece}\n{_FENCE}" for piece in _pack(body, "\n", room)]
    return _pack(block, "\n", limit)


def _pack(text: str, separator: str, limit: int) -> list[str]:
    """Greedy packing of ``text`` split on ``separator`` (lines, then words, then characters)."""
    pieces: list[str] = []
    run: list[str] = []
    for part in text.split(separator):
        if len(part) > limit:
            pieces += _join(run, separator, limit)
            run = []
            pieces += _pack(part, " ", limit) if separator == "\n" else _cut(part, limit)
        else:
            run.append(part)
    return pieces + _join(run, separator, limit)


def _join(parts: list[str], separator: str, limit: int) -> list[str]:
    """Greedily join parts (each at most ``limit`` long) with ``separator`` into pieces of at
    most ``limit`` characters, keeping their order."""
    pieces: list[str] = []
    current = ""
    for part in parts:
        candidate = f"{current}{separator}{part}" if current else part
        if len(candidate) <= limit:
            current = candidate
        else:
            pieces.append(current)
            current = part
    if current:
        pieces.append(current)
    return pieces


def _cut(word: str, limit: int) -> list[str]:
    pieces = []
    while len(word) > limit:
        cut = limit
        # Do not cut inside an entity (&amp;) or a <url|label>: back up to where it starts.
        for opener, closer in (("&", ";"), ("<", ">")):
            start = word.rfind(opener, 0, cut)
            if start > 0 and word.find(closer, start, cut) == -1:
                cut = min(cut, start)
        pieces.append(word[:cut])
        word = word[cut:]
    return [*pieces, word] if word else pieces


# -- the other way: Slack text as the bot should read it ------------------------------------------

_SLACK_TOKEN = re.compile(r"<([^<>]*)>")


def slack_to_text(text: str, *, drop_user: str | None = None) -> str:
    """Turn Slack's message markup into plain text for OCS: ``<url|label>`` → ``label (url)``,
    ``<#C1|general>`` → ``#general``, ``<!here>`` → ``@here``, entities decoded; mentions of
    ``drop_user`` (the bot) are removed. Slack sends every message with ``& < >`` escaped and
    its own ``<...>`` tokens, the mirror of ``escape`` (Slack's "Formatting text" page)."""
    return re.sub(r"[ \t]{2,}", " ", _decode(text, drop_user)).strip()


def mrkdwn_to_plain(mrkdwn: str) -> str:
    """The same message without markup (Outgoing.plain): links spelled out, entities decoded."""
    plain = re.sub(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])", r"\1", mrkdwn)
    plain = re.sub(r"(?<![\w_])_([^_\n]+)_(?![\w_])", r"\1", plain)
    plain = re.sub(r"(?<![\w~])~([^~\n]+)~(?![\w~])", r"\1", plain)
    plain = re.sub(r"```\n?", "", plain)
    return _decode(plain, None).strip()


def _decode(text: str, drop_user: str | None) -> str:
    def token(match: re.Match[str]) -> str:
        inner = match.group(1)
        target, _, label = inner.partition("|")
        if target.startswith("@"):
            return "" if target[1:] == drop_user else f"@{label or target[1:]}"
        if target.startswith("#"):
            return f"#{label or target[1:]}"
        if target.startswith("!"):
            name = target[1:].split("^", 1)[0]
            return label or f"@{name}"
        if target.startswith("mailto:"):
            return label or target.removeprefix("mailto:")
        return f"{label} ({target})" if label and label != target else target

    decoded = _SLACK_TOKEN.sub(token, text)
    return decoded.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
