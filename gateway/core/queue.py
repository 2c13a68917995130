"""The names the edge and the workers agree on for Dramatiq's queue (the edge writes wake-up
messages itself, in one Lua script with the inbox, so it needs the names but not the workers)."""

from __future__ import annotations

__all__ = ["ADVANCE", "NAMESPACE", "POLL_SESSION", "QUEUE"]

QUEUE = "ocsgw"
#: Hands one conversation to a worker's turn runner.
ADVANCE = "advance_conversation"
#: Hands one conversation to a worker's turn runner for a watch (kept for messages
#: queued by older versions; today the runner's sweeper starts these polls itself).
POLL_SESSION = "poll_session"
#: Dramatiq keys live beside ours but under their own prefix.
NAMESPACE = "ocsgw-dramatiq"
