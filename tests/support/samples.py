"""The platform sample payloads in ``../shared/platforms/samples`` (beside the checkout)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["SAMPLES_DIR", "load_sample"]

_ROOT = Path(__file__).resolve().parents[2]
SAMPLES_DIR = Path(os.environ.get("OCS_SHARED_DIR", _ROOT.parent / "shared")) / "platforms" / "samples"


def load_sample(name: str) -> Any:
    return json.loads((SAMPLES_DIR / name).read_text(encoding="utf-8"))
