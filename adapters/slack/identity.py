"""Who the bot is in a single-workspace channel, known before the first event.

The parser needs the bot's user id and bot id (``auth.test``) to drop the app's own messages and
to strip its mention (docs/PLATFORMS.md §2.5). Asking Slack while an event waits made every 200 wait
on Slack, 15 s and more when Slack hung (issue 10), so ``BotIdentity`` asks at start-up in the
background, refreshes every ``REFRESH_S``, and retries with backoff while Slack fails; the events
edge only reads what it last learnt. OAuth installations store their identity at install time and
never come here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.core.errors import DeliveryError, RecipientGone

__all__ = ["BACKOFF_MAX_S", "BotIdentity", "Identity", "REFRESH_S", "STARTUP_WAIT_S"]

log = logging.getLogger(__name__)

#: How often a known identity is asked again (a reinstall can change the bot id).
REFRESH_S = 1800.0
#: The first retry after a failure waits 1 s, doubling up to this.
BACKOFF_MAX_S = 60.0
#: How long start-up waits for Slack's first answer before serving without it.
STARTUP_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class Identity:
    """The bot as Slack knows it in one workspace (``auth.test``)."""

    team_id: str
    user_id: str
    bot_id: str


AuthTest = Callable[[], Awaitable[Identity]]


class BotIdentity:
    """The single-workspace bot's identity, kept fresh by a background task of this process."""

    def __init__(self, auth_test: AuthTest, *, refresh_s: float = REFRESH_S, backoff_max_s: float = BACKOFF_MAX_S) -> None:
        self._auth_test = auth_test
        self._refresh_s = refresh_s
        self._backoff_max_s = backoff_max_s
        self._current: Identity | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_answer = asyncio.Event()

    @property
    def current(self) -> Identity | None:
        """The last identity Slack gave, or None while it never answered."""
        return self._current

    async def start(self, *, wait_s: float = STARTUP_WAIT_S) -> None:
        """Start asking in the background (idempotent) and wait up to ``wait_s`` for Slack's first
        answer, so a healthy start knows the bot before its first event; a hanging Slack delays
        start-up by ``wait_s`` and nothing else. Call on the loop that serves events."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="slack-identity")
        try:
            await asyncio.wait_for(self._first_answer.wait(), wait_s)
        except TimeoutError:
            log.warning("slack auth.test has not answered in %.0f s; learning the bot's identity in the background", wait_s)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        delay = 1.0
        while True:
            try:
                try:
                    self._current = await self._auth_test()
                finally:
                    self._first_answer.set()
            except RecipientGone as exc:
                # A revoked or wrong token does not heal by asking often.
                log.warning("slack auth.test refused the bot token (%s); asking again later", exc)
                await asyncio.sleep(self._backoff_max_s)
                continue
            except DeliveryError as exc:
                log.warning("slack auth.test failed (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max_s)
                continue
            delay = 1.0
            await asyncio.sleep(self._refresh_s)
