"""Tests that drive a real outside tool (Chromium, promtool) skip where the machine lacks it, so a
laptop without root still runs the rest; CI sets ``OCSGW_REQUIRE_TOOLS=1`` (``.ci/run``), where a
missing tool fails those tests instead of hiding them."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

__all__ = ["require_tool", "tool_missing"]


def tool_missing(reason: str) -> NoReturn:
    """Skip (or, in CI, fail) the current test because a tool it drives is not here."""
    if os.environ.get("OCSGW_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{reason} (OCSGW_REQUIRE_TOOLS=1: scripts/ensure_test_tools should have installed it)")
    pytest.skip(reason)


def require_tool(command: str, reason: str) -> str:
    """The path of ``command``, or ``tool_missing(reason)``."""
    path = shutil.which(command)
    if path is None:
        tool_missing(reason)
    return path
