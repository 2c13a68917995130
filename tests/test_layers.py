"""The house's imports run one way. Read from the code's own ``import`` statements (an AST walk,
nothing is imported), so a new arrow against the grain fails here, not in review.

    gateway.core          the foundation: models, errors, what every channel's config and keys
      ↑                   share, the channel interface
    gateway.store         what lives in Redis
      ↑
    gateway.ocs           the OCS client, its request budget, the simulator
    gateway.speech        beside it: the speech service's client and audio (core, store only)
      ↑
    gateway.observe       health, readiness, metrics and gauges, for every process
      ↑
    workers               the turn runner and engine, the worker's HTTP listener
      ↑                                       adapters   one package per platform (core, store)
      ↑                                          ↑
    gateway.services, gateway.config_loading     the assembly: below the edge and the CLI, the
      ↑                                          only modules that import adapters (and workers)
    gateway.edge          the web process
      ↑
    gateway.cli           the command

Every arrow points one way, so no two packages import each other (checked on its own below: a
cycle fails even when both arrows are allowed). And the packages every channel shares name no
platform: what is Telegram's or Slack's lives in its adapter.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Package (or module) → the project packages its modules may import.
ALLOWED: dict[str, tuple[str, ...]] = {
    "gateway.core": ("gateway.core",),
    "gateway.store": ("gateway.core", "gateway.store"),
    "gateway.ocs": ("gateway.core", "gateway.store", "gateway.ocs"),
    "gateway.speech": ("gateway.core", "gateway.store", "gateway.speech"),
    "gateway.observe": ("gateway.core", "gateway.store", "gateway.ocs", "gateway.observe"),
    "adapters": ("gateway.core", "gateway.store", "adapters"),
    "workers": ("gateway.core", "gateway.store", "gateway.ocs", "gateway.speech", "gateway.observe", "workers"),
    "gateway.config_loading": ("gateway.core", "adapters"),
    "gateway.services": (
        "gateway.core", "gateway.store", "gateway.ocs", "gateway.speech", "gateway.observe", "gateway.services",
        "adapters", "workers",
    ),
    "gateway.edge": (
        "gateway.core", "gateway.store", "gateway.ocs", "gateway.observe", "gateway.edge", "gateway.services",
    ),
    "gateway.cli": ("gateway", "adapters", "workers"),
}
PROJECT = ("gateway", "adapters", "workers")

#: Packages that serve every channel alike: their code names no platform (the adapters do).
PLATFORM_FREE = ("gateway.core", "gateway.store", "gateway.ocs", "gateway.speech", "gateway.observe", "workers")
PLATFORM_NAMES = re.compile(r"telegram|slack|whatsapp", re.IGNORECASE)
#: Mentions that stay, each for its reason; any other fails. Logging is set up before the
#: configuration (and so the adapters) is known, and guards every process's lines:
KNOWN_MENTIONS: frozenset[tuple[str, str]] = frozenset({
    # the SDKs' own logger names, whose payload dumps are withheld
    ("gateway.core.logs", "telegram"),
    ("gateway.core.logs", "slack_sdk"),
    ("gateway.core.logs", "slack_bolt"),
    ("gateway.core.logs", "adapters.slack.socket_mode.sdk"),
    # the OAuth routes whose query strings never reach a log line
    ("gateway.core.redaction", r"(/slack/[^/\s?]+/(?:install|oauth_redirect))\?[^\s'\"]*"),
})


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "gateway":  # ``from gateway import x`` names a subpackage or module
                found.extend((node.lineno, f"gateway.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in PROJECT]


def _documentation(tree: ast.AST) -> set[int]:
    """The ids of string constants that stand alone as statements: docstrings (of modules,
    classes, functions, attributes). They are prose, like comments, which the AST does not hold."""
    return {
        id(statement.value)
        for node in ast.walk(tree)
        for field in ("body", "orelse", "finalbody")
        if isinstance(statements := getattr(node, field, None), list)  # a lambda's body is one expression
        for statement in statements
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    }


def _platform_mentions(path: Path) -> list[tuple[int, str]]:
    """Where the code names a platform: in an identifier (a name, attribute, definition,
    parameter, keyword), an import, or a string literal that is not documentation."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    prose = _documentation(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        words: list[str] = []
        if isinstance(node, ast.Name):
            words = [node.id]
        elif isinstance(node, ast.Attribute):
            words = [node.attr]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            words = [node.name]
        elif isinstance(node, ast.arg) or (isinstance(node, ast.keyword) and node.arg is not None):
            words = [node.arg]
        elif isinstance(node, ast.alias):
            words = [node.name, node.asname or ""]
        elif isinstance(node, ast.ImportFrom):
            words = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            words = [node.value]
        found.extend((getattr(node, "lineno", 0), word) for word in words if PLATFORM_NAMES.search(word))
    return found


def _rule(module: str) -> tuple[str, tuple[str, ...]] | None:
    matches = [key for key in ALLOWED if module == key or module.startswith(key + ".")]
    if not matches:
        return None
    key = max(matches, key=len)
    return key, ALLOWED[key]


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _sources(root: Path = ROOT) -> list[Path]:
    return sorted(p for package in PROJECT for p in (root / package).rglob("*.py"))


def _package_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Layer package (a key of ``ALLOWED``) → the other layer packages its modules import."""
    graph: dict[str, set[str]] = {}
    for path in _sources(root):
        rule = _rule(_module_name(path, root))
        if rule is None:
            continue
        for _, name in _imports(path):
            target = _rule(name)
            if target is not None and target[0] != rule[0]:
                graph.setdefault(rule[0], set()).add(target[0])
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """A cycle for every back edge a depth-first walk meets, each as a path that returns to its
    start (``["a", "b", "a"]``); empty when the graph has none."""
    found: list[list[str]] = []
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> None:
        for target in sorted(graph.get(node, ())):
            if target in path:
                found.append([*path[path.index(target):], target])
            elif target not in done:
                walk(target, [*path, target])
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            walk(start, [start])
    return found


def test_every_module_has_a_place_in_the_layers() -> None:
    homeless = [_module_name(p) for p in _sources() if _rule(_module_name(p)) is None and _module_name(p) not in PROJECT]
    assert homeless == [], f"modules outside every layer (move them, or give their package a rule): {homeless}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path: Path) -> None:
    module = _module_name(path)
    rule = _rule(module)
    if rule is None:
        allowed: tuple[str, ...] = ()  # a package's own __init__: imports nothing of the project
    else:
        allowed = rule[1]
    against = [f"line {line}: {name}" for line, name in _imports(path) if not _within(name, allowed)]
    assert against == [], f"{module} may import only {allowed or 'nothing of the project'}, but imports {against}"


def test_the_rule_catches_an_import_against_the_grain(tmp_path: Path) -> None:
    # The walk itself must see an upward import, or every test above passes vacuously.
    sample = tmp_path / "sample.py"
    sample.write_text("from workers.turns import TurnEngine\nimport adapters.slack\nfrom gateway import services\n")
    names = [name for _, name in _imports(sample)]
    assert names == ["workers.turns", "adapters.slack", "gateway.services"]
    assert not _within("workers.turns", ALLOWED["gateway.store"])


def test_no_two_packages_import_each_other() -> None:
    # Also for imports the table allows both ways (the assembly's packages once did: the edge
    # imported the services, which imported the edge's worker listener).
    cycles = _cycles(_package_graph())
    assert cycles == [], f"import cycles between packages (move what both need below them): {cycles}"


def test_the_cycle_check_sees_two_packages_importing_each_other(tmp_path: Path) -> None:
    (tmp_path / "gateway" / "edge").mkdir(parents=True)
    (tmp_path / "gateway" / "edge" / "app.py").write_text("from gateway.services import Services\n")
    (tmp_path / "gateway" / "services.py").write_text("from gateway.edge.listener import Listener\n")
    (tmp_path / "gateway" / "core").mkdir()
    (tmp_path / "gateway" / "core" / "models.py").write_text("")
    graph = _package_graph(tmp_path)
    assert graph == {"gateway.edge": {"gateway.services"}, "gateway.services": {"gateway.edge"}}
    assert _cycles(graph) == [["gateway.edge", "gateway.services", "gateway.edge"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


@pytest.mark.parametrize(
    "path",
    [p for p in _sources() if _within(_module_name(p), PLATFORM_FREE)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_shared_packages_name_no_platform(path: Path) -> None:
    # Each platform's settings, keys and behaviour live in its adapter (adapters/<platform>/);
    # what every channel shares knows none of them.
    module = _module_name(path)
    named = [f"line {line}: {word!r}" for line, word in _platform_mentions(path) if (module, word) not in KNOWN_MENTIONS]
    assert named == [], f"{module} names a platform (move it into the adapter): {named}"


def test_the_platform_check_sees_code_but_not_prose(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        '''"""Telegram and Slack are mentioned in prose only."""
from adapters.telegram.keys import TelegramKeys
import slack_sdk


def pace(keys, whatsapp_id):
    """Slack's pacing."""
    # a Telegram comment
    return keys.telegram_chat_pace(f"tg:{whatsapp_id}", label="slack")
'''
    )
    words = sorted(word for _, word in _platform_mentions(sample))
    assert words == ["TelegramKeys", "adapters.telegram.keys", "slack", "slack_sdk", "telegram_chat_pace", "whatsapp_id",
                     "whatsapp_id"]
