"""Citations in code, tests and docs point into the project's own docs, at sections that exist.

A comment that says why by citing ``docs/OCS.md §4.3`` (or ``docs/PLATFORMS.md §1.3``, or a
heading such as ``docs/ARCHITECTURE.md#failure-handling``) must name a document that exists and a
section heading it has. A bare ``§`` must say which document it means: the document named right
before it, the citation it continues (``docs/OCS.md §4.2, §8 rule 2``), or the file's own
``§ = docs/OCS.md``. Nothing may cite the reference texts that were kept outside the repository
(CONTRACT, PROTOCOLS, DESIGN, STYLE) or a path outside it: a reader of the repository cannot open
them. ``scripts/rewrite_citations.py`` rewrites the old citations (issue 15).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCOPE = ("gateway", "adapters", "workers", "tests", "bench", "deploy", "docs", "scripts", "README.md")
#: These two name the old texts on purpose: the rewrite's patterns and this check's.
SELF = frozenset({"tests/test_docs_cited.py", "scripts/rewrite_citations.py"})
SKIP_DIRS = frozenset({"__pycache__", ".pytest_cache", ".venv", "node_modules", ".mypy_cache"})
#: Documents whose headings are numbered; a bare § inside one means that document.
NUMBERED = frozenset({"docs/OCS.md", "docs/PLATFORMS.md"})

OUTSIDE = re.compile(
    r"(?<![\w-])(?:CONTRACT|PROTOCOLS|DESIGN|STYLE)(?:\.md)?(?![\w-])"
    r"|/work/"
    r"|(?<![\w.-])(?:\.\./)?shared/(?:ocs|platforms)/(?!samples)"  # the sample payloads are test data
)
DOC = re.compile(r"docs/[\w-]+\.md")
#: A public standard's name right before a section sign: its own numbering, not ours.
STANDARD = re.compile(r"\bRFC[ \t]?\d+[ \t]*$")
ANCHOR = re.compile(r"(?P<doc>docs/[\w-]+\.md)#(?P<anchor>[\w-]+)")
SECTION = re.compile(r"§[ \t]?(?P<num>\d+(?:\.\d+)*)(?:[-–](?P<end>\d+(?:\.\d+)*))?")
DEFAULT = re.compile(r"§\)?[ \t]*(?:=|refers? to)[ \t]*(?P<doc>docs/[\w-]+\.md)")
#: Between a document's name and its §: only line breaks and comment marks.
NEAR = re.compile(r"[\s#]*")
#: Between two § of one citation: list punctuation, "and", "or", "rule 2".
GLUE = re.compile(r"""(?:[\s,;/+&()*#`'"-]|\b(?:and|or|rule|step|fact|see|also)\b|\d+(?![\w.]))*""")
HEADING = re.compile(r"^#{1,6}[ \t]+(?P<text>.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
HEADING_NUMBER = re.compile(r"§(?P<num>\d+(?:\.\d+)*)")


def _files() -> Iterator[tuple[str, str]]:
    for entry in SCOPE:
        base = ROOT / entry
        paths = [base] if base.is_file() else sorted(base.rglob("*")) if base.is_dir() else []
        for path in paths:
            rel = path.relative_to(ROOT).as_posix()
            if not path.is_file() or rel in SELF or SKIP_DIRS & set(path.relative_to(ROOT).parts):
                continue
            data = path.read_bytes()
            if b"\0" in data:
                continue  # images
            try:
                yield rel, data.decode("utf-8")
            except UnicodeDecodeError:
                continue


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(doc: str) -> tuple[set[str], set[str]] | None:
    """A document's numbered sections and its heading anchors; None when it does not exist."""
    path = ROOT / doc
    if not path.is_file():
        return None
    texts = [m["text"] for m in HEADING.finditer(path.read_text(encoding="utf-8"))]
    numbers = {n["num"] for t in texts if (n := HEADING_NUMBER.match(t.strip()))}
    return numbers, {_slug(t) for t in texts}


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def citation_problems(rel: str, text: str) -> list[str]:
    """What is wrong with the citations of one file (``rel`` relative to the repository)."""
    problems: list[str] = []
    for m in ANCHOR.finditer(text):
        found = _headings(m["doc"])
        if found is None:
            problems.append(f"{rel}:{_line(text, m.start())}: {m['doc']} does not exist")
        elif m["anchor"] not in found[1]:
            problems.append(f"{rel}:{_line(text, m.start())}: {m['doc']} has no heading #{m['anchor']}")
    default = DEFAULT.search(text)
    own = rel if rel in NUMBERED else default["doc"] if default else None
    chain: str | None = None
    chain_end = 0
    for m in SECTION.finditer(text):
        before = text[max(0, m.start() - 200):m.start()]
        if STANDARD.search(before):
            continue  # a section of a public standard (RFC 9112 §6.3), not of our docs
        named = [d for d in DOC.finditer(before) if NEAR.fullmatch(before[d.end():])]
        doc = (named[-1].group(0) if named
               else chain if chain is not None and GLUE.fullmatch(text[chain_end:m.start()])
               else own)
        chain, chain_end = doc, m.end()
        where = f"{rel}:{_line(text, m.start())}: {m.group(0)!r}"
        if doc is None:
            problems.append(f"{where} names no document (write docs/OCS.md {m.group(0)}, or the right one)")
            continue
        found = _headings(doc)
        if found is None:
            problems.append(f"{where}: {doc} does not exist")
            continue
        missing = [n for n in (m["num"], m["end"]) if n is not None and n not in found[0]]
        if missing:
            problems.append(f"{where}: {doc} has no heading §{missing[0]}")
    return problems


def test_nothing_cites_a_text_outside_the_repository() -> None:
    found = [f"{rel}:{_line(text, m.start())}: {m.group(0)!r}"
             for rel, text in _files() for m in OUTSIDE.finditer(text)]
    assert found == [], (
        "cite the project's own docs instead (scripts/rewrite_citations.py maps the old names; a STYLE "
        "citation becomes the reason itself):\n" + "\n".join(found)
    )


def test_every_cited_section_exists_in_the_document_named() -> None:
    problems = [p for rel, text in _files() for p in citation_problems(rel, text)]
    assert problems == [], "\n".join(problems)


def test_the_numbered_documents_exist_and_number_their_sections() -> None:
    for doc in sorted(NUMBERED):
        found = _headings(doc)
        assert found is not None, f"{doc} is missing"
        assert {"1", "2"} <= found[0], f"{doc} has no §1/§2 headings"


@pytest.mark.parametrize(
    ("text", "wrong"),
    [
        ("the task poll (docs/OCS.md §4.3)", False),
        ("the task poll (docs/OCS.md §4.2, §8 rule 2)", False),
        ("the task poll (docs/OCS.md\n    # §4.3)", False),
        ("Telegram (docs/PLATFORMS.md §1.1-1.2, §4)", False),
        ("see docs/ARCHITECTURE.md#failure-handling", False),
        ("§ = docs/OCS.md\n\n# (§4.4/§6.3)", False),
        ("the task poll (§4.3)", True),
        ("the task poll (docs/OCS.md §42)", True),
        ("the task poll (docs/OCS.md §4.2, §99)", True),
        ("Slack (docs/PLATFORMS.md §2.1-2.9)", True),
        ("see docs/ARCHITECTURE.md#no-such-heading", True),
        ("see docs/NOWHERE.md §1", True),
        ("(docs/OCS.md §4.3). Later, unrelated: (§4.4)", True),
    ],
)
def test_the_check_tells_a_good_citation_from_a_bad_one(text: str, wrong: bool) -> None:
    assert bool(citation_problems("gateway/example.py", text)) is wrong


@pytest.mark.parametrize(
    "text",
    ["(CONTRACT §4.3)", "(PROTOCOLS.md §1.3)", 'DESIGN "Nothing acknowledged is lost"', "(STYLE.md §7)",
     "see /work/shared/ocs/openapi-v1.yml", "../shared/ocs/CONTRACT.md"],
)
def test_an_outside_citation_is_seen(text: str) -> None:
    assert OUTSIDE.search(text)


def test_the_sample_payloads_beside_the_checkout_are_not_a_citation() -> None:
    assert OUTSIDE.search("The platform sample payloads in ``../shared/platforms/samples``") is None


def test_every_target_of_the_rewrite_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """The headings ``scripts/rewrite_citations.py`` sends DESIGN citations to are still there."""
    spec = importlib.util.spec_from_file_location("rewrite_citations", ROOT / "scripts" / "rewrite_citations.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)  # its dataclasses look their module up
    spec.loader.exec_module(script)
    targets = sorted({target for _, target in script.DESIGN_TARGETS})
    problems = [p for target in targets for p in citation_problems("scripts/rewrite_citations.py", target)]
    assert problems == [], "\n".join(problems)
