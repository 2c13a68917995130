"""The house's imports run one way. Read from the code's own ``import`` statements (an AST walk,
nothing is imported), so a new arrow against the grain fails here, not in review.

    gateway.core          the foundation: models, errors, config, keys, the channel interface
      ↑
    gateway.store         what lives in Redis
      ↑
    gateway.ocs           the OCS client, its request budget, the simulator
      ↑            ↖
    workers         adapters (core and store only)
      ↑                ↑
    gateway.services  — the assembly: the only modules that import adapters and workers,
    gateway.edge          with the CLI
    gateway.cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Package (or module) → the project packages its modules may import.
ALLOWED: dict[str, tuple[str, ...]] = {
    "gateway.core": ("gateway.core",),
    "gateway.store": ("gateway.core", "gateway.store"),
    "gateway.ocs": ("gateway.core", "gateway.store", "gateway.ocs"),
    "adapters": ("gateway.core", "gateway.store", "adapters"),
    "workers": ("gateway.core", "gateway.store", "gateway.ocs", "workers"),
    "gateway.edge": ("gateway.core", "gateway.store", "gateway.ocs", "gateway.edge", "gateway.services"),
    "gateway.services": ("gateway", "adapters", "workers"),
    "gateway.cli": ("gateway", "adapters", "workers"),
}
PROJECT = ("gateway", "adapters", "workers")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
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


def _rule(module: str) -> tuple[str, tuple[str, ...]] | None:
    matches = [key for key in ALLOWED if module == key or module.startswith(key + ".")]
    if not matches:
        return None
    key = max(matches, key=len)
    return key, ALLOWED[key]


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _sources() -> list[Path]:
    return sorted(p for package in PROJECT for p in (ROOT / package).rglob("*.py"))


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
