"""Tests that drive a real outside tool (Chromium, promtool) fail, with how to get it, where the
machine lacks it: the test command installs both (scripts/ensure_test_tools), so a missing tool
is a broken set-up to mend, never a test to hide."""

from __future__ import annotations

import shutil
from typing import NoReturn

import pytest

__all__ = ["require_tool", "tool_missing"]


def tool_missing(reason: str) -> NoReturn:
    """Fail the current test because a tool it drives is not here."""
    pytest.fail(f"{reason} (scripts/ensure_test_tools installs it as root: apt-get install chromium prometheus)")


def require_tool(command: str, reason: str) -> str:
    """The path of ``command``, or ``tool_missing(reason)``."""
    path = shutil.which(command)
    if path is None:
        tool_missing(reason)
    return path
