"""How the operator commands find a running quickstart: ``ocs-gateway run`` with nothing
configured writes ``quickstart.json`` into its data directory (its pid, the address it serves,
the embedded Redis it started) and removes it when it stops; ``status``, ``dlq`` and ``budget``
given no configuration read it and use the same demo configuration. A file whose process is
gone (a killed quickstart leaves it behind) counts as no quickstart."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Quickstart", "STATE_FILE", "announced", "find_quickstart"]

STATE_FILE = "quickstart.json"


@dataclass(frozen=True, slots=True)
class Quickstart:
    """A quickstart as it announced itself: ``redis_url`` is its embedded Redis, or None when it
    used ``$REDIS_URL`` (whose value stays out of the file)."""

    pid: int
    base_url: str
    redis_url: str | None

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process: alive, though it may not be ours
            return True
        return True


def find_quickstart(data_dir: Path) -> tuple[Quickstart | None, Quickstart | None]:
    """``(running, stale)``: the quickstart announced in ``data_dir`` if its process is alive,
    else the one whose process is gone (for the error message), else neither."""
    try:
        raw = json.loads((data_dir / STATE_FILE).read_text(encoding="utf-8"))
        found = Quickstart(pid=int(raw["pid"]), base_url=str(raw["base_url"]), redis_url=raw.get("redis_url"))
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    return (found, None) if found.alive() else (None, found)


@contextlib.contextmanager
def announced(data_dir: Path, *, base_url: str, redis_url: str | None) -> Iterator[Quickstart]:
    """Announce this process as the quickstart in ``data_dir`` while the block runs."""
    me = Quickstart(pid=os.getpid(), base_url=base_url, redis_url=redis_url)
    path = data_dir / STATE_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    # Written whole then renamed, so a reader never sees half a file.
    partial = path.with_suffix(f".{me.pid}.tmp")
    partial.write_text(json.dumps(asdict(me)), encoding="utf-8")
    partial.chmod(0o600)
    partial.replace(path)
    try:
        yield me
    finally:
        current, _ = find_quickstart(data_dir)
        if current is None or current.pid == me.pid:  # not another quickstart's, started since
            path.unlink(missing_ok=True)
