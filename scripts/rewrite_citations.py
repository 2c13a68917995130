#!/usr/bin/env python3
"""Rewrite citations of the reference texts kept outside the repository into the project's docs.

    scripts/rewrite_citations.py            rewrite in place, then report what it could not map
    scripts/rewrite_citations.py --check    change nothing; exit 1 if anything would change
    scripts/rewrite_citations.py --list     print every citation and where it now points

``CONTRACT §x`` (also ``CONTRACT.md``, ``/work/shared/ocs/CONTRACT.md``) becomes
``docs/OCS.md §x``; ``PROTOCOLS …`` becomes ``docs/PLATFORMS.md …``; ``DESIGN "<guarantee or
heading>"`` and ``DESIGN.md step N`` become a heading of ``docs/ARCHITECTURE.md``. A bare ``§x``
with no document before it gets one: the document last cited above it in the same file, else the
one its folder cites (``PATH_DOCS``). Files that declare ``§ = docs/X.md`` keep their bare ``§``.

Reported, left as they are, exit status 1: ``STYLE`` citations (state the reason in the comment
instead), a ``DESIGN`` citation not in ``DESIGN_TARGETS``, other paths outside the repository, a
bare ``§`` whose document cannot be told, and any section the target document does not have.
Running it again changes nothing. ``tests/test_docs_cited.py`` checks the result.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What is searched: the project's code, tests, docs and recipes.
SCOPE = ("gateway", "adapters", "workers", "tests", "bench", "deploy", "docs", "scripts", "README.md")
#: This script and the test name the old documents on purpose.
SKIP = frozenset({"scripts/rewrite_citations.py", "tests/test_docs_cited.py"})
SKIP_DIRS = frozenset({"__pycache__", ".pytest_cache", ".venv", "node_modules", ".mypy_cache"})
OCS_DOC = "docs/OCS.md"
PLATFORMS_DOC = "docs/PLATFORMS.md"
ARCHITECTURE_DOC = "docs/ARCHITECTURE.md"
#: Documents whose headings are numbered ``§N``; their own bare ``§`` refer to themselves.
NUMBERED_DOCS = (OCS_DOC, PLATFORMS_DOC)
#: Which document a bare ``§`` means in a file that cites none by name (first match wins).
PATH_DOCS: tuple[tuple[str, str], ...] = (
    ("adapters/", PLATFORMS_DOC),
    ("tests/adapters/", PLATFORMS_DOC),
    ("tests/fakes/", PLATFORMS_DOC),
    ("gateway/ocs/", OCS_DOC),
    ("gateway/store/", OCS_DOC),
    ("workers/", OCS_DOC),
    ("tests/simulator/", OCS_DOC),
    ("tests/gateway/test_ocs", OCS_DOC),
    ("tests/workers/", OCS_DOC),
)
_ARCH_FAILURES = f"{ARCHITECTURE_DOC}#failure-handling"
_ARCH_DEPARTS = f"{ARCHITECTURE_DOC}#where-the-design-departs-from-the-agreed-sketch-and-why"
_ARCH_NEXT = f"{ARCHITECTURE_DOC}#where-the-next-capabilities-go"
#: DESIGN's guarantees and headings (lower case, matched as a prefix of the quoted words) → where
#: docs/ARCHITECTURE.md (or docs/OCS.md) states the same thing.
DESIGN_TARGETS: tuple[tuple[str, str], ...] = (
    ("nothing acknowledged is lost", _ARCH_FAILURES),
    ("no duplicate turns", _ARCH_FAILURES),
    ("per-conversation order", _ARCH_FAILURES),
    ("faults are survived", _ARCH_FAILURES),
    ("fail closed", _ARCH_FAILURES),
    ("guarantees", _ARCH_FAILURES),
    ("waiting is cheap", _ARCH_DEPARTS),
    ("ownership is fenced", _ARCH_DEPARTS),
    ("ocs's request budget", _ARCH_DEPARTS),
    ("one message, end to end", f"{ARCHITECTURE_DOC}#one-message-end-to-end"),
    ("seams", f"{ARCHITECTURE_DOC}#the-seams"),
    ("the ocs side", f"{OCS_DOC} §7"),
    ("where the next capabilities sit", _ARCH_NEXT),
    ("a turn may carry several inbox entries", _ARCH_NEXT),
    ("progress is a delivery", _ARCH_NEXT),
    ("speech is a service", _ARCH_NEXT),
    ("redis is opened in one place", _ARCH_NEXT),
    ("a platform brings its own config", _ARCH_NEXT),
)

_B = r"(?<![\w.-])"  # a name starts here (not inside another word or path)
_E = r"(?![\w-])"
_OCS_NAME = re.compile(_B + r"(?:/work/shared/ocs/|(?:\.\./)?shared/ocs/|ocs/)?CONTRACT(?:\.md)?" + _E)
_PLATFORMS_NAME = re.compile(
    _B + r"(?:/work/shared/platforms/|(?:\.\./)?shared/platforms/|platforms/)?PROTOCOLS(?:\.md)?" + _E
)
_DESIGN = re.compile(
    _B + r"(?:/work/shared/|(?:\.\./)?shared/)?DESIGN(?:\.md)?" + _E
    + r"""(?:(?:'s)?:?[ \t]*(?:"(?P<quoted>[^"\n]+)"|“(?P<curly>[^”\n]+)”|step[ \t]+(?P<step>\d+)))?"""
)
_STYLE = re.compile(_B + r"(?:/work/shared/|(?:\.\./)?shared/)?STYLE(?:\.md)?" + _E + r"(?:[ \t]*§[ \t]?\d+)?")
#: Paths outside the repository (the platform sample payloads are test data, not a citation).
_OUTSIDE = re.compile(r"/work/[\w./+-]*|" + _B + r"(?:\.\./)?shared/(?:ocs|platforms)/(?!samples)[\w./-]*")
_DOC_REF = re.compile(r"docs/[\w-]+\.md")
_ANCHOR_REF = re.compile(r"(?P<doc>docs/[\w-]+\.md)#(?P<anchor>[\w-]+)")
#: What may stand between a document's name and the § it is cited by.
_NEAR = re.compile(r"[\s#]*")
_FOREIGN = re.compile(r"(?<![\w-])(?:STYLE|DESIGN)(?:\.md)?[\s#]*\Z")
_SECTION = re.compile(r"§[ \t]?(?P<num>\d+(?:\.\d+)*)(?:[-–](?P<end>\d+(?:\.\d+)*))?")
#: What may stand between two § of one citation (``§4.2, §8 rule 2``, ``§3.3/§4.5``).
_GLUE = re.compile(r"""(?:[\s,;/+&()*#`'"-]|\b(?:and|or|rule|step|fact|see|also)\b|\d+(?![\w.]))*""")
_DEFAULT = re.compile(r"§\)?[ \t]*(?:=|refers? to)[ \t]*(?P<doc>docs/[\w-]+\.md)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(?P<text>.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_HEADING_NUMBER = re.compile(r"§(?P<num>\d+(?:\.\d+)*)")


@dataclass(frozen=True, slots=True)
class Citation:
    """One citation found: where, what it said, and what it says now (None: not mapped)."""

    path: str
    line: int
    was: str
    now: str | None
    problem: str = ""


def project_files(root: Path = ROOT) -> Iterator[tuple[str, Path]]:
    """Every text file in scope, as (path relative to ``root``, path)."""
    for entry in SCOPE:
        base = root / entry
        candidates = [base] if base.is_file() else sorted(base.rglob("*")) if base.is_dir() else []
        for path in candidates:
            rel = path.relative_to(root).as_posix()
            if not path.is_file() or rel in SKIP or SKIP_DIRS & set(path.relative_to(root).parts):
                continue
            yield rel, path


def read_text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@dataclass(frozen=True, slots=True)
class DocIndex:
    """What a document can be cited by: its numbered sections and its heading anchors."""

    sections: frozenset[str]
    anchors: frozenset[str]

    @classmethod
    def read(cls, path: Path) -> DocIndex | None:
        text = read_text(path) if path.is_file() else None
        if text is None:
            return None
        headings = [m["text"] for m in _HEADING.finditer(text)]
        numbers = {n["num"] for h in headings if (n := _HEADING_NUMBER.match(h.strip()))}
        return cls(frozenset(numbers), frozenset(slug(h) for h in headings))

    def has_section(self, number: str, end: str | None = None) -> bool:
        """Whether ``§number`` (or, for a range such as ``§2.1-2.5``, both its ends) is a heading."""
        return number in self.sections and (end is None or end in self.sections)


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _design_target(match: re.Match[str]) -> str | None:
    if match["step"] is not None:
        return f"{ARCHITECTURE_DOC}#one-message-end-to-end"
    words = match["quoted"] or match["curly"]
    if words is None:
        return ARCHITECTURE_DOC
    wanted = words.strip().lower()
    for prefix, target in DESIGN_TARGETS:
        if wanted.startswith(prefix):
            return target
    return None


def _path_doc(rel: str) -> str | None:
    for prefix, doc in PATH_DOCS:
        if rel.startswith(prefix):
            return doc
    return None


def tied_doc(text: str, start: int, chain_doc: str | None, chain_end: int) -> str | None:
    """The document the § at ``start`` is tied to: named right before it (line breaks and comment
    marks may come between), or the one of the citation it continues (``docs/OCS.md §4.2, §8
    rule 2``: the previous § ended at ``chain_end`` and only list glue stands between)."""
    before = text[max(0, start - 200):start]
    names = list(_DOC_REF.finditer(before))
    if names and _NEAR.fullmatch(before[names[-1].end():]):
        return names[-1].group(0)
    if chain_doc is not None and _GLUE.fullmatch(text[chain_end:start]):
        return chain_doc
    return None


def _foreign(text: str, start: int) -> bool:
    """A § that belongs to a STYLE or DESIGN citation (reported, never given a document)."""
    return _FOREIGN.search(text[max(0, start - 40):start]) is not None


@dataclass(frozen=True, slots=True)
class CitedSection:
    """A citation of a docs file: by numbered section (``number``/``end``) or by heading anchor."""

    doc: str
    pos: int
    text: str
    number: str | None = None
    end: str | None = None
    anchor: str | None = None


def cited_sections(text: str) -> Iterator[CitedSection]:
    """Every ``docs/X.md#anchor``, and every § tied to a document (by name, by continuing a
    citation, or by the file's ``§ = docs/X.md``)."""
    for m in _ANCHOR_REF.finditer(text):
        yield CitedSection(m["doc"], m.start(), m.group(0), anchor=m["anchor"])
    default = _DEFAULT.search(text)
    default_doc = default["doc"] if default else None
    chain_doc: str | None = None
    chain_end = 0
    for m in _SECTION.finditer(text):
        doc = None if _foreign(text, m.start()) else tied_doc(text, m.start(), chain_doc, chain_end) or default_doc
        if doc is not None:
            yield CitedSection(doc, m.start(), m.group(0), number=m["num"], end=m["end"])
        chain_doc, chain_end = doc, m.end()


class Rewriter:
    """Rewrites one file's text and records every citation it saw."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self._indexes: dict[str, DocIndex | None] = {}

    def index(self, doc: str) -> DocIndex | None:
        if doc not in self._indexes:
            self._indexes[doc] = DocIndex.read(self.root / doc)
        return self._indexes[doc]

    def rewrite(self, rel: str, text: str) -> tuple[str, list[Citation]]:
        """The file's new text, and the citations seen in it (``now`` None: not mapped)."""
        if rel in NUMBERED_DOCS:
            return text, []
        found: list[Citation] = []
        text = self._names(rel, text, found)
        text = self._bare_sections(rel, text, found)
        self._check_targets(rel, text, found)
        return text, found

    def _names(self, rel: str, text: str, found: list[Citation]) -> str:
        """The old documents' names → the new documents' names (no line breaks added or removed,
        so line numbers stay those of the original)."""

        def to(doc: str) -> Callable[[re.Match[str]], str]:
            def replace(m: re.Match[str]) -> str:
                found.append(Citation(rel, _line_of(m.string, m.start()), m.group(0), doc))
                return doc
            return replace

        def design(m: re.Match[str]) -> str:
            target = _design_target(m)
            line = _line_of(m.string, m.start())
            if target is None:
                found.append(Citation(rel, line, m.group(0), None,
                                      "a DESIGN citation with no known target: add it to DESIGN_TARGETS, or rewrite it by hand"))
                return m.group(0)
            found.append(Citation(rel, line, m.group(0), target))
            return target

        text = _OCS_NAME.sub(to(OCS_DOC), text)
        text = _PLATFORMS_NAME.sub(to(PLATFORMS_DOC), text)
        text = _DESIGN.sub(design, text)
        for m in _STYLE.finditer(text):
            found.append(Citation(rel, _line_of(text, m.start()), m.group(0), None,
                                  "a STYLE citation: state the reason in the comment itself, or drop it"))
        for m in _OUTSIDE.finditer(text):
            found.append(Citation(rel, _line_of(text, m.start()), m.group(0), None, "a path outside the repository"))
        return text

    def _bare_sections(self, rel: str, text: str, found: list[Citation]) -> str:
        """Give each § that no document is tied to the document it must mean."""
        default = _DEFAULT.search(text)
        default_doc = default["doc"] if default else None
        out: list[str] = []
        copied = 0
        chain_doc: str | None = None
        chain_end = 0
        for m in _SECTION.finditer(text):
            if _foreign(text, m.start()):
                chain_doc, chain_end = None, m.end()
                continue
            doc = tied_doc(text, m.start(), chain_doc, chain_end) or default_doc
            if doc is None:
                doc = self._infer(rel, text, m.start())
                index = self.index(doc) if doc is not None else None
                line = _line_of(text, m.start())
                if doc is None or index is None or not index.has_section(m["num"], m["end"]):
                    found.append(Citation(rel, line, m.group(0), None,
                                          "a bare § whose document cannot be told" if doc is None
                                          else f"a bare §, and {doc} has no such section: name its document by hand"))
                    doc = None
                else:
                    out.append(text[copied:m.start()])
                    out.append(f"{doc} ")
                    copied = m.start()
                    found.append(Citation(rel, line, m.group(0), f"{doc} {m.group(0)}"))
            chain_doc, chain_end = doc, m.end()
        out.append(text[copied:])
        return "".join(out)

    @staticmethod
    def _infer(rel: str, text: str, start: int) -> str | None:
        earlier = [m.group(0) for m in _DOC_REF.finditer(text, 0, start) if m.group(0) in NUMBERED_DOCS]
        return earlier[-1] if earlier else _path_doc(rel)

    def _check_targets(self, rel: str, text: str, found: list[Citation]) -> None:
        """Every cited document exists and has the cited section or heading."""
        for cited in cited_sections(text):
            index = self.index(cited.doc)
            line = _line_of(text, cited.pos)
            if index is None:
                problem = f"{cited.doc} does not exist"
            elif cited.anchor is not None:
                problem = "" if cited.anchor in index.anchors else f"{cited.doc} has no heading #{cited.anchor}"
            elif cited.number is not None and not index.has_section(cited.number, cited.end):
                problem = f"{cited.doc} has no section §{cited.number}" + (f" or §{cited.end}" if cited.end else "")
            else:
                problem = ""
            if problem:
                found.append(Citation(rel, line, cited.text, None, problem))


def run(root: Path, *, write: bool) -> tuple[list[Citation], list[str]]:
    """Rewrite (or with ``write=False`` only look at) every file; returns the citations seen and
    the files that changed (or would)."""
    rewriter = Rewriter(root)
    seen: list[Citation] = []
    changed: list[str] = []
    for rel, path in project_files(root):
        text = read_text(path)
        if text is None:
            continue
        new, found = rewriter.rewrite(rel, text)
        seen.extend(found)
        if new != text:
            changed.append(rel)
            if write:
                path.write_text(new, encoding="utf-8")
    return seen, changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything would change")
    mode.add_argument("--list", action="store_true", help="print every citation found and its new form")
    args = parser.parse_args(argv)
    seen, changed = run(ROOT, write=not (args.check or args.list))
    if args.list:
        for c in seen:
            print(f"{c.path}:{c.line}: {c.was!r} -> {c.now if c.now is not None else 'NOT MAPPED: ' + c.problem}")
    rewritten = [c for c in seen if c.now is not None]
    unmapped = [c for c in seen if c.now is None]
    verb = "would change" if args.check or args.list else "changed"
    print(f"{len(rewritten)} citations rewritten; {len(changed)} files {verb}", file=sys.stderr)
    for c in unmapped:
        print(f"{c.path}:{c.line}: not mapped: {c.was!r}: {c.problem}", file=sys.stderr)
    if args.check and changed:
        for rel in changed:
            print(f"would change {rel}", file=sys.stderr)
    return 1 if unmapped or (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
