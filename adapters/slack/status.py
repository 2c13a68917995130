"""The thread's status under the app's name (``assistant.threads.setStatus``) while OCS works.

Slack shows "<App name> <status>" at the foot of a thread: "is thinking…" until OCS reports
progress, then OCS's current progress line. Posting a message in the thread clears it (Slack
does), so an answered turn needs no further call; a turn that ends without posting clears it
with an empty status, and Slack itself drops a status after two minutes without a message.

A thread needs a ``thread_ts``: a DM answered outside a thread has none and keeps the ⏳
reaction. Where Slack refuses the status (a token without the scope, a thread it is not allowed
in) the refusal is remembered for ``REFUSAL_TTL_S``, for the whole workspace when the code says
the app cannot set statuses at all, else for that thread, so a refused call is not repeated on
every poll and the reaction stands in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from adapters.slack.api import SlackApi, slack_errors
from gateway.core.errors import (
    DeliveryError,
    DeliveryRejected,
    RecipientGone,
    RetryLater,
)
from gateway.core.models import Route

__all__ = [
    "MAX_STATUS_CHARS",
    "REFUSAL_TTL_S",
    "STATUS_REFRESH_S",
    "ThreadStatus",
    "WORKING_STATUS",
    "WORKSPACE_CODES",
    "thread_of",
]

log = logging.getLogger(__name__)

#: The status before OCS's first progress line (Slack writes the app's name before it).
WORKING_STATUS = "is thinking…"
#: A status fades two minutes after it was set: the same line is set again after this long.
STATUS_REFRESH_S = 60.0
#: A refusal is remembered this long (a reinstall with new scopes counts within the hour).
REFUSAL_TTL_S = 3600.0
#: A status is one line under the app's name.
MAX_STATUS_CHARS = 200
#: Codes that say the app cannot set statuses in the workspace at all, whatever the thread.
WORKSPACE_CODES = frozenset(
    {"missing_scope", "not_allowed_token_type", "no_permission", "access_denied", "unknown_method",
     "method_deprecated", "deprecated_endpoint", "is_bot", "not_allowed", "feature_not_enabled"}
)  # fmt: skip
#: A status call must not hold the turn: the poll that carried the line waits for it.
_TIMEOUT_S = 5.0
#: Threads and workspaces remembered per process (the oldest are forgotten first).
_REMEMBERED = 4096

_Thread = tuple[str, str, str]  # team, channel, thread_ts
K = TypeVar("K")
V = TypeVar("V")


class _Recent(OrderedDict[K, V], Generic[K, V]):
    """A bounded map: adding beyond ``_REMEMBERED`` entries forgets the oldest."""

    def put(self, key: K, value: V) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > _REMEMBERED:
            self.popitem(last=False)


@dataclass(frozen=True, slots=True)
class _Shown:
    text: str
    at: float
    #: A message went into the thread since, which cleared the status.
    cleared: bool = False


def thread_of(route: Route) -> _Thread | None:
    """The route's thread as (team, channel, thread_ts), or None outside a thread."""
    thread_ts = route.get("thread_ts")
    if not thread_ts or not route.get("team") or not route.get("channel"):
        return None
    return route["team"], route["channel"], thread_ts


class ThreadStatus:
    """The statuses one Slack channel (app) set, and where Slack refused them."""

    def __init__(self, *, name: str, api: SlackApi, clock: Callable[[], float] = time.monotonic) -> None:
        self._name = name
        self._api = api
        self._clock = clock
        self._shown: _Recent[_Thread, _Shown] = _Recent()
        self._refused_threads: _Recent[_Thread, float] = _Recent()  # → until when
        self._refused_teams: _Recent[str, float] = _Recent()

    def usable(self, route: Route) -> bool:
        """Whether a status may be tried on the route's thread (it has one, not refused)."""
        thread = thread_of(route)
        if thread is None:
            return False
        now = self._clock()
        return not (_holds(self._refused_teams, thread[0], now) or _holds(self._refused_threads, thread, now))

    def current(self, route: Route) -> str | None:
        """The status this process shows on the route's thread now, if any."""
        thread = thread_of(route)
        shown = self._shown.get(thread) if thread is not None else None
        return shown.text if shown is not None and not shown.cleared else None

    async def set(self, token: str, route: Route, text: str) -> bool:
        """Show ``text`` as the thread's status; True if it shows. Never raises."""
        thread = thread_of(route)
        line = " ".join(text.split())[:MAX_STATUS_CHARS]
        if thread is None or not line or not self.usable(route):
            return False
        now = self._clock()
        shown = self._shown.get(thread)
        if shown is not None and not shown.cleared and shown.text == line and now - shown.at < STATUS_REFRESH_S:
            return True  # already on screen
        try:
            await self._call(token, thread, line)
        except RetryLater as exc:
            log.debug("slack %s: status not set for now: %s", self._name, exc)
            return False
        except (DeliveryRejected, RecipientGone) as exc:
            self._refuse(thread, exc.reason, now)
            return False
        self._shown.put(thread, _Shown(line, now))
        return True

    def posted(self, route: Route) -> None:
        """A message went into the route's thread: Slack cleared its status."""
        thread = thread_of(route)
        shown = self._shown.get(thread) if thread is not None else None
        if thread is not None and shown is not None:
            self._shown[thread] = _Shown(shown.text, shown.at, cleared=True)

    async def clear(self, token: str, route: Route) -> None:
        """Clear a status this process set that no message has cleared since. Never raises."""
        thread = thread_of(route)
        shown = self._shown.pop(thread, None) if thread is not None else None
        if thread is None or shown is None or shown.cleared:
            return
        try:
            await self._call(token, thread, "")
        except DeliveryError as exc:  # Slack drops it after two minutes anyway
            log.debug("slack %s: status not cleared: %s", self._name, exc)

    async def _call(self, token: str, thread: _Thread, status: str) -> None:
        _, channel, thread_ts = thread
        with slack_errors("assistant.threads.setStatus"):
            async with asyncio.timeout(_TIMEOUT_S):
                await self._api.client().assistant_threads_setStatus(
                    token=token, channel_id=channel, thread_ts=thread_ts, status=status
                )

    def _refuse(self, thread: _Thread, code: str, now: float) -> None:
        if code in WORKSPACE_CODES:
            self._refused_teams.put(thread[0], now + REFUSAL_TTL_S)
            log.info("slack %s: no thread status in workspace %s (%s); the ⏳ reaction stands in", self._name, thread[0], code)
        else:
            self._refused_threads.put(thread, now + REFUSAL_TTL_S)
            log.debug("slack %s: no status in this thread (%s); the ⏳ reaction stands in", self._name, code)


def _holds(refusals: _Recent[K, float], key: K, now: float) -> bool:
    until = refusals.get(key)
    if until is None:
        return False
    if until <= now:
        del refusals[key]
        return False
    return True
