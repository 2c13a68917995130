"""Every module states what other packages may use: ``__all__`` exists, is sorted, names only what
the module has, and names every public class and function the module defines (as httpx's export
test does)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import adapters
import gateway
import workers


def _modules() -> list[ModuleType]:
    found = []
    for package in (gateway, adapters, workers):
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            found.append(importlib.import_module(info.name))
    return found


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_all_is_sorted_and_complete(module: ModuleType) -> None:
    names = getattr(module, "__all__", None)
    if names is None:
        assert not [n for n in vars(module) if not n.startswith("_") and callable(vars(module)[n])
                    and getattr(vars(module)[n], "__module__", None) == module.__name__], (
            f"{module.__name__} defines public names but has no __all__"
        )
        return
    assert list(names) == sorted(names), f"{module.__name__}.__all__ is not sorted"
    missing = [name for name in names if not hasattr(module, name)]
    assert not missing, f"{module.__name__}.__all__ names what it does not define: {missing}"
    defined = _public_definitions(module)
    unlisted = sorted(defined - set(names))
    assert not unlisted, f"{module.__name__} defines public {unlisted} but leaves them out of __all__ (add them, or make them _private)"


def _public_definitions(module: ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
    }


def test_the_completeness_check_sees_an_unlisted_definition() -> None:
    sample = ModuleType("sample")
    exec("def listed(): pass\ndef forgotten(): pass\n__all__ = ['listed']", vars(sample))
    for value in vars(sample).values():
        if inspect.isfunction(value):
            value.__module__ = "sample"
    assert _public_definitions(sample) - set(sample.__all__) == {"forgotten"}
