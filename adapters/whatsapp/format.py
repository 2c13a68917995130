"""OCS's Markdown as WhatsApp's own formatting, split into messages of at most 4,096 characters.

WhatsApp does not render Markdown: bold is ``*x*``, italic ``_x_``, strikethrough ``~x~``, inline
code a single backtick pair, blocks of monospace between triple backticks; ``- `` and ``1. ``
lists and ``> `` quotes show as such; there are no headings, tables or labelled links
(docs/WHATSAPP.md, "Formatting"). The Markdown is parsed with markdown-it-py (already a
dependency) and written back in one tree walk: a regex chain breaks on nesting and code spans.
Headings become bold lines, tables an aligned monospace block, links ``label (url)``.

A text message's body holds at most 4,096 characters (the Cloud API's limit); a longer reply is
split between blocks, then lines, then words, and a code block cut in two stays fenced in both.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

__all__ = ["MAX_TEXT_CHARS", "markdown_to_whatsapp", "split_text", "to_plain"]

#: The Cloud API's limit on ``text.body``.
MAX_TEXT_CHARS = 4096

_MD = MarkdownIt("commonmark").enable("strikethrough").enable("table")
_FENCE = "```"


def markdown_to_whatsapp(markdown: str, *, limit: int = MAX_TEXT_CHARS) -> list[str]:
    """The reply as WhatsApp messages, in order, each at most ``limit`` characters."""
    root = SyntaxTreeNode(_MD.parse(markdown))
    blocks = [text for text in (_block(node, 0) for node in root.children) if text.strip()]
    return split_text(blocks, limit)


def to_plain(text: str) -> str:
    """A formatted chunk without its markers, for a template parameter (which shows them raw)."""
    return text.replace(_FENCE, "").replace("*", "").replace("~", "")


def split_text(blocks: list[str], limit: int = MAX_TEXT_CHARS) -> list[str]:
    """Pack blocks into messages of at most ``limit`` characters, between blocks if possible."""
    return _join([piece for block in blocks for piece in _fit(block, limit)], "\n\n", limit)


# -- blocks ---------------------------------------------------------------------------------------


def _block(node: SyntaxTreeNode, depth: int) -> str:
    kind = node.type
    if kind == "paragraph":
        return _inline_children(node)
    if kind == "heading":
        return f"*{_inline_children(node, in_bold=True)}*"
    if kind in ("bullet_list", "ordered_list"):
        return _list(node, depth)
    if kind == "blockquote":
        inner = "\n".join(_block(child, depth) for child in node.children)
        return "\n".join(f"> {line}" if line else ">" for line in inner.split("\n"))
    if kind in ("fence", "code_block"):
        return f"{_FENCE}{node.content.rstrip(chr(10))}{_FENCE}"
    if kind == "table":
        return f"{_FENCE}{_table_text(node)}{_FENCE}"
    if kind == "hr":
        return "───────────"
    if kind == "html_block":
        return node.content.rstrip("\n")
    return "\n".join(_block(child, depth) for child in node.children)


def _list(node: SyntaxTreeNode, depth: int) -> str:
    number = int(str(node.attrs.get("start", 1)))
    indent = "  " * depth
    lines: list[str] = []
    for item in node.children:
        marker = f"{number}." if node.type == "ordered_list" else "-"
        number += 1
        body = "\n".join(part for part in (_block(child, depth + 1) for child in item.children) if part)
        first, _, rest = body.partition("\n")
        lines.append(f"{indent}{marker} {first}")
        for line in rest.split("\n") if rest else ():
            lines.append(line if line.startswith(indent + "  ") else f"{indent}  {line}")
    return "\n".join(lines)


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
    if kind == "text":
        return node.content
    if kind in ("softbreak", "hardbreak"):
        return "\n"
    if kind == "code_inline":
        return f"`{node.content}`"
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
        return _link(str(node.attrs.get("src", "")), _plain_inline(node) or "image")
    if kind == "html_inline":
        return node.content
    return _inline_children(node, in_bold=in_bold)


def _link(url: str, label: str) -> str:
    if not url.startswith(("http://", "https://", "mailto:")):
        return label
    # WhatsApp turns a bare URL into a link; a label equal to it is said once.
    return url if not label or label == url else f"{label} ({url})"


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
    if block.startswith(_FENCE) and block.endswith(_FENCE) and len(block) > 2 * len(_FENCE):
        body = block[len(_FENCE) : -len(_FENCE)]
        return [f"{_FENCE}{piece}{_FENCE}" for piece in _pack(body, "\n", limit - 2 * len(_FENCE))]
    return _pack(block, "\n", limit)


def _pack(text: str, separator: str, limit: int) -> list[str]:
    """Greedy packing of ``text`` split on ``separator`` (lines, then words, then characters)."""
    pieces: list[str] = []
    run: list[str] = []
    for part in text.split(separator):
        if len(part) > limit:
            pieces += _join(run, separator, limit)
            run = []
            pieces += _pack(part, " ", limit) if separator == "\n" else [part[i : i + limit] for i in range(0, len(part), limit)]
        else:
            run.append(part)
    return pieces + _join(run, separator, limit)


def _join(parts: list[str], separator: str, limit: int) -> list[str]:
    pieces: list[str] = []
    current = ""
    for part in parts:
        candidate = f"{current}{separator}{part}" if current else part
        if len(candidate) <= limit:
            current = candidate
        else:
            if current:
                pieces.append(current)
            current = part
    if current:
        pieces.append(current)
    return pieces
