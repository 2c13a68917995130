"""Slack's assistant threads (the AI-app surface, ``assistant: {enabled: true}``): what the app
does there beyond answering.

A user opens the assistant view: Slack sends ``assistant_thread_started`` naming the new thread
(a thread in the user's DM with the app); the app offers the configured suggested prompts
(``assistant.threads.setSuggestedPrompts``). Nothing is stored for OCS: no one said anything
yet. The user's first message in the thread names it (``assistant.threads.setTitle``, the name
in the app's history). Both calls need nothing from OCS, so the parser starts them itself, each
in a task of its own: the event's 200 (or Socket Mode ack) never waits for Slack, and a failure
costs only the prompts or the title (logged at debug).

Which message is the first: the one that finds the thread new in ``ThreadTracker`` (one Redis
``SET NX``), so a redelivered event does not rename the thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from adapters.slack.api import SlackApi, slack_errors
from adapters.slack.config import SlackAssistantConfig
from adapters.slack.threads import ThreadTracker
from adapters.slack.workspaces import Workspaces
from gateway.core.errors import DeliveryError, PayloadInvalid

__all__ = ["AssistantThread", "AssistantThreads", "MAX_TITLE_CHARS", "read_thread", "title_for"]

log = logging.getLogger(__name__)

#: A title is a name in a list: the first line of the message, cut at a word.
MAX_TITLE_CHARS = 80
#: How long ``aclose`` lets calls in flight finish before it cancels them.
_CLOSE_GRACE_S = 2.0
#: A call that takes longer is given up (its task must not outlive its use).
_TIMEOUT_S = 10.0

#: One Web API call, given the workspace's token.
_Call = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class AssistantThread:
    """Where an ``assistant_thread_*`` event happens: the DM channel, the thread's ts, the user."""

    channel: str
    thread_ts: str
    user: str = ""


def read_thread(event: Mapping[str, Any]) -> AssistantThread:
    """The ``assistant_thread`` of an ``assistant_thread_started``/``_context_changed`` event.

    Raises:
        PayloadInvalid: it is missing, or its channel or thread_ts is not a string.
    """
    thread = event.get("assistant_thread")
    if not isinstance(thread, dict):
        raise PayloadInvalid(f"{event.get('type')} without assistant_thread")
    channel, thread_ts, user = thread.get("channel_id"), thread.get("thread_ts"), thread.get("user_id")
    if not isinstance(channel, str) or not channel or not isinstance(thread_ts, str) or not thread_ts:
        raise PayloadInvalid("assistant_thread without channel_id or thread_ts")
    if "\n" in channel + thread_ts:
        raise PayloadInvalid("assistant_thread: channel_id and thread_ts cannot contain a newline")
    return AssistantThread(channel, thread_ts, user if isinstance(user, str) else "")


def title_for(text: str) -> str:
    """A thread title from a message: its first non-empty line, at most ``MAX_TITLE_CHARS``,
    cut at a word with "…"."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    line = " ".join(line.split())
    if len(line) <= MAX_TITLE_CHARS:
        return line
    cut = line[: MAX_TITLE_CHARS - 1]
    if " " in cut[MAX_TITLE_CHARS // 2 :]:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,.;:") + "…"


class AssistantThreads:
    """The suggested prompts and titles of one Slack channel's assistant threads."""

    def __init__(
        self,
        *,
        name: str,
        config: SlackAssistantConfig,
        api: SlackApi,
        workspaces: Workspaces,
        threads: ThreadTracker,
    ) -> None:
        self._name = name
        self._config = config
        self._api = api
        self._workspaces = workspaces
        self._threads = threads
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    def thread_started(self, team: str, enterprise: str, thread: AssistantThread) -> None:
        """Offer the configured prompts in a thread the user just opened (in a task)."""
        if not self._config.enabled or not self._config.suggested_prompts:
            return
        prompts = [{"title": p.title, "message": p.message} for p in self._config.suggested_prompts]
        extra = {"title": self._config.prompts_title} if self._config.prompts_title else {}

        async def offer(token: str) -> None:
            await self._api.client().assistant_threads_setSuggestedPrompts(
                token=token, channel_id=thread.channel, thread_ts=thread.thread_ts, prompts=prompts, **extra
            )

        self._spawn("assistant.threads.setSuggestedPrompts", team, enterprise, offer)

    async def message(self, team: str, enterprise: str, channel: str, thread_ts: str, text: str) -> None:
        """A user's message in an assistant thread: the first one names the thread (in a task).

        Raises:
            redis errors: as the parser's other Redis calls (the edge answers 503; Slack redelivers).
        """
        if not self._config.enabled or not self._config.title_from_first_message:
            return
        title = title_for(text)
        if not title or not await self._threads.join_first(team, channel, thread_ts):
            return

        async def name(token: str) -> None:
            await self._api.client().assistant_threads_setTitle(
                token=token, channel_id=channel, thread_ts=thread_ts, title=title
            )

        self._spawn("assistant.threads.setTitle", team, enterprise, name)

    async def aclose(self) -> None:
        """Let the calls in flight finish (briefly), then cancel what is left."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=_CLOSE_GRACE_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, method: str, team: str, enterprise: str, call: _Call) -> None:
        task = asyncio.get_running_loop().create_task(self._run(method, team, enterprise, call))
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _run(self, method: str, team: str, enterprise: str, call: _Call) -> None:
        try:
            token = await self._workspaces.token_for(team, enterprise)
            with slack_errors(method):
                async with asyncio.timeout(_TIMEOUT_S):
                    await call(token)
        except DeliveryError as exc:
            log.debug("slack %s: %s skipped: %s", self._name, method, exc)
        except Exception:  # a task of its own: nobody else would see it
            log.warning("slack %s: %s failed", self._name, method, exc_info=True)


