"""A Markdown reply → Telegram HTML chunks, each with a plain-text twin, each within the limit.

Telegram takes 1-4096 characters per message "after entities parsing", and counts entity
offsets in UTF-16 code units (docs/PLATFORMS.md §1.5). Whether the limit itself counts UTF-16 units is
not stated, so we measure in UTF-16 (an astral emoji counts 2): the conservative reading.

Cuts are made at the gentlest boundary that fits: between blocks, then between lines, then after
a sentence, then between words, and only as a last resort inside a word. A cut never falls
inside a tag or an ``&…;`` escape, because the chunks are cut as styled runs (``markup.py``) and
escaped only when written out; tags open at a cut are closed and reopened in the next chunk.

The plain twin is what we resend when Telegram refuses the HTML ("can't parse entities",
docs/PLATFORMS.md §1.2): the same words, links written out as "label (url)", and it is measured too,
so the fallback never exceeds the limit either.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from adapters.telegram.markup import VERBATIM_PREFIXES, Run, Tag, markdown_to_runs

__all__ = ["Chunk", "TEXT_LIMIT_UTF16", "render_markdown", "utf16_len"]

#: sendMessage text limit (docs/PLATFORMS.md §1.5; PTB ``MessageLimit.MAX_TEXT_LENGTH``).
TEXT_LIMIT_UTF16 = 4096

#: Where to cut, gentlest first. Each pattern matches the separator that ends a piece.
_BOUNDARIES = (
    re.compile(r"\n{2,}"),
    re.compile(r"\n"),
    re.compile(r"(?<=[.!?…。])[\"')\]]*\s+"),
    re.compile(r"\s+"),
)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One Telegram message: ``html`` for parse_mode HTML, ``plain`` for the fallback."""

    html: str
    plain: str


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit Telegram counts in."""
    return len(text.encode("utf-16-le")) // 2


def render_markdown(markdown: str, *, limit: int = TEXT_LIMIT_UTF16) -> list[Chunk]:
    """Render OCS Markdown as Telegram HTML chunks of at most ``limit`` UTF-16 units each.

    Returns an empty list for a reply with no visible text (an attachment-only reply).
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    chunks: list[Chunk] = []
    for piece in _pack(markdown_to_runs(markdown), limit):
        trimmed = _trim(piece)
        if any(not run.plain_only for run in trimmed):
            chunks.append(Chunk(html=_to_html(trimmed), plain=_to_plain(trimmed)))
    return chunks


# -- measuring ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Size:
    shown: int  # UTF-16 units of the HTML's visible text
    plain: int  # UTF-16 units of the plain twin

    def __add__(self, other: _Size) -> _Size:
        return _Size(self.shown + other.shown, self.plain + other.plain)

    def fits(self, limit: int) -> bool:
        return max(self.shown, self.plain) <= limit


def _size(runs: list[Run]) -> _Size:
    shown = sum(utf16_len(run.text) for run in runs if not run.plain_only)
    plain = sum(utf16_len(run.text) for run in runs)
    return _Size(shown, plain)


# -- cutting --------------------------------------------------------------------------------------


def _pack(runs: list[Run], limit: int) -> list[list[Run]]:
    packer = _Packer(limit)
    packer.add(runs, 0)
    return packer.finish()


class _Packer:
    """Fills chunks greedily. A piece that fits a chunk of its own is never cut (a gentler
    boundary wins); a piece too big for any chunk is cut at the next finer boundary, and its
    pieces continue to fill the current chunk."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[list[Run]] = []
        self.current: list[Run] = []
        self.size = _Size(0, 0)

    def add(self, piece: list[Run], level: int) -> None:
        size = _size(piece)
        if (self.size + size).fits(self.limit):
            self.current += piece
            self.size = self.size + size
        elif size.fits(self.limit):
            self.flush()
            self.current, self.size = list(piece), size
        elif level < len(_BOUNDARIES):
            for sub in _cut_after(piece, _BOUNDARIES[level]):
                self.add(sub, level + 1)
        else:
            self.hard_cut(piece)

    def hard_cut(self, piece: list[Run]) -> None:
        """Cut anywhere between code points (a str index never splits a surrogate pair)."""
        for run in piece:
            if run.plain_only:
                if (self.size + _size([run])).fits(self.limit):
                    self.current.append(run)
                    self.size = self.size + _size([run])
                # else: a link's URL that no longer fits; the HTML keeps it in href anyway
                continue
            text = run.text
            while text:
                take = _prefix_fitting(text, self.limit - max(self.size.shown, self.size.plain))
                if take == 0 and not self.current:
                    take = 1  # a limit narrower than one character: overflow rather than loop
                if take == 0:
                    self.flush()
                    continue
                part = _with_text(run, text[:take])
                self.current.append(part)
                self.size = self.size + _size([part])
                text = text[take:]

    def flush(self) -> None:
        if self.current:
            self.chunks.append(self.current)
        self.current, self.size = [], _Size(0, 0)

    def finish(self) -> list[list[Run]]:
        self.flush()
        return self.chunks


def _cut_after(runs: list[Run], boundary: re.Pattern[str]) -> list[list[Run]]:
    """Split runs into pieces, each ending just after a match of ``boundary``."""
    pieces: list[list[Run]] = []
    current: list[Run] = []
    for run in runs:
        if run.plain_only:  # a link's URL stays with its label
            current.append(run)
            continue
        start = 0
        for match in boundary.finditer(run.text):
            if match.end() == start:
                continue
            current.append(_with_text(run, run.text[start : match.end()]))
            pieces.append(current)
            current, start = [], match.end()
        if start < len(run.text):
            current.append(_with_text(run, run.text[start:]))
    if current:
        pieces.append(current)
    return pieces


def _prefix_fitting(text: str, room: int) -> int:
    """How many code points of ``text`` fit in ``room`` UTF-16 units."""
    used = 0
    for index, char in enumerate(text):
        used += 2 if ord(char) > 0xFFFF else 1
        if used > room:
            return index
    return len(text)


def _with_text(run: Run, text: str) -> Run:
    return Run(text, run.tags, plain_only=run.plain_only, is_break=run.is_break)


# -- writing out ----------------------------------------------------------------------------------


def _verbatim(run: Run) -> bool:
    return any(tag.open.startswith(VERBATIM_PREFIXES) for tag in run.tags)


def _trim(runs: list[Run]) -> list[Run]:
    """Drop the whitespace at a chunk's edges (code keeps its indentation, only newlines go)."""
    out = list(runs)
    while out and not out[0].text.strip():
        out.pop(0)
    while out and not out[-1].text.strip():
        out.pop()
    if not out:
        return []
    # The first run shown in the HTML may follow a plain-only URL tail cut from the last chunk.
    first_shown = next((i for i, run in enumerate(out) if not run.plain_only), 0)
    for index in {0, first_shown}:
        run = out[index]
        out[index] = _with_text(run, run.text.lstrip("\n") if _verbatim(run) else run.text.lstrip())
    out[-1] = _with_text(out[-1], out[-1].text.rstrip())
    return [run for run in out if run.text]


def _to_plain(runs: list[Run]) -> str:
    return "".join(run.text for run in runs)


def _to_html(runs: list[Run]) -> str:
    parts: list[str] = []
    open_tags: list[Tag] = []
    for run in runs:
        if run.plain_only or not run.text:
            continue
        keep = 0
        while keep < min(len(open_tags), len(run.tags)) and open_tags[keep] == run.tags[keep]:
            keep += 1
        parts.extend(tag.close for tag in reversed(open_tags[keep:]))
        parts.extend(tag.open for tag in run.tags[keep:])
        open_tags = list(run.tags)
        parts.append(html.escape(run.text, quote=False))
    parts.extend(tag.close for tag in reversed(open_tags))
    return "".join(parts)
