"""``Reply`` → Slack: render to parts (a Block Kit ``markdown`` block with the mrkdwn conversion as
its ``text`` fallback, ``format.py``), post them in the thread at a pace Slack accepts, and show
that OCS works: the thread's status (``status.py``: "is thinking…", then OCS's progress lines),
or a ⏳ reaction where there is no thread or Slack refuses the status.

Pacing: ``chat.postMessage`` allows about one message per second per channel (docs/PLATFORMS.md §2.6); every worker
takes its slot through ``gateway.store.pacing.take_slot`` on a per-channel key. A short wait is booked
and slept through; a long one books nothing and becomes ``PacingWait`` (not counted as a failed
attempt) so no worker is held for seconds and no other thread's slot is pushed out. A 429 becomes
``RetryLater(Retry-After)``: the worker retries this part before the next, which pauses the
conversation and keeps its order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from adapters.slack.api import SlackApi, slack_errors
from adapters.slack.files import MAX_UPLOAD_BYTES, upload_bytes, upload_file
from adapters.slack.format import (
    MAX_MARKDOWN_CHARS,
    escape,
    markdown_for_blocks,
    markdown_to_mrkdwn,
    mrkdwn_to_plain,
    split_message,
)
from adapters.slack.keys import SlackKeys
from adapters.slack.status import WORKING_STATUS, ThreadStatus
from adapters.slack.threads import ThreadTracker
from adapters.slack.workspaces import Workspaces
from gateway.core.channel import VoiceNote
from gateway.core.errors import AttachmentUnavailable, DeliveryError, PacingWait
from gateway.core.keys import Keys
from gateway.core.models import Delivery, Outgoing, Reply, ReplyAttachment, Route
from gateway.store.pacing import take_slot

__all__ = ["MARKDOWN_HINT", "PACE_INTERVAL_S", "SlackSender", "VOICE_REPLY_TITLE", "WORKING_REACTION", "render"]

log = logging.getLogger(__name__)

#: Slack's documented rate for chat.postMessage in one channel (docs/PLATFORMS.md §2.6).
PACE_INTERVAL_S = 1.0
#: Waits up to this long are booked and slept through; longer ones book nothing and are handed
#: back to the worker.
MAX_INLINE_WAIT_S = 1.5
#: The reaction put on the user's message while OCS works, removed when the answer is out.
WORKING_REACTION = "hourglass_flowing_sand"

#: The title of a spoken answer's audio file in the thread.
VOICE_REPLY_TITLE = "Voice reply"

#: The ``Outgoing.hints`` key holding a part's Markdown for its ``markdown`` block.
MARKDOWN_HINT = "markdown"
#: User messages whose working state this process remembers (the oldest are forgotten first).
_REMEMBERED = 4096

FetchOCSFile = Callable[[ReplyAttachment], Awaitable[bytes]]


def render(reply: Reply) -> list[Outgoing]:
    """Markdown → messages of at most 12,000 characters of Markdown (one ``markdown`` block each,
    in ``hints``) with their mrkdwn conversion as ``text``, then one part per attachment."""
    parts: list[Outgoing] = []
    for chunk in split_message(markdown_for_blocks(reply.text), MAX_MARKDOWN_CHARS):
        fallback = "\n\n".join(markdown_to_mrkdwn(chunk))
        parts.append(Outgoing(text=fallback, plain=mrkdwn_to_plain(fallback), hints={MARKDOWN_HINT: chunk}))
    parts.extend(Outgoing(attachment=attachment) for attachment in reply.attachments)
    return parts


class SlackSender:
    """Sends rendered parts of one channel."""

    def __init__(
        self,
        *,
        name: str,
        api: SlackApi,
        workspaces: Workspaces,
        threads: ThreadTracker,
        redis: aioredis.Redis,
        keys: Keys,
        fetch_ocs_file: FetchOCSFile | None,
        show_progress: bool = True,
    ) -> None:
        self._name = name
        self._api = api
        self._workspaces = workspaces
        self._threads = threads
        self._redis = redis
        self._keys = SlackKeys.of(keys)
        self._fetch_ocs_file = fetch_ocs_file
        #: Off: the ⏳ reaction only and no progress lines, as before issue 16.
        self._show_progress = show_progress
        self._status = ThreadStatus(name=name, api=api)
        #: Per user message: whether this process showed the working state as a status, so
        #: clear_working removes no reaction that was never added.
        self._as_status: OrderedDict[tuple[str, str, str], bool] = OrderedDict()

    async def send(self, route: Route, outgoing: Outgoing, delivery: Delivery | None = None) -> str:
        """Post one part; returns its ``ts`` (a message) or file id (an upload).

        Raises:
            PacingWait: paced out (a ``RetryLater`` that is no failure; nothing was booked).
            RetryLater: rate limited (429 ``Retry-After``) or Slack failing.
            RecipientGone: channel gone/archived, bot removed, app uninstalled or token revoked.
            DeliveryRejected: Slack refuses this message for good (``msg_too_long``...).
        """
        team, channel = route["team"], route["channel"]
        token = await self._workspaces.token_for(team, route.get("enterprise", ""))
        await self._pace(team, channel)
        if outgoing.attachment is not None:
            part_id = await self._send_attachment(token, route, outgoing.attachment)
        else:
            part_id = await self._post(token, route, outgoing.text, markdown=outgoing.hints.get(MARKDOWN_HINT))
        self._status.posted(route)  # Slack clears the thread's status when the app posts in it
        thread_ts = route.get("thread_ts")
        if thread_ts and not channel.startswith("D"):
            await self._threads.join(team, channel, thread_ts)  # follow-ups need no mention
        return part_id

    async def send_voice(self, route: Route, note: VoiceNote) -> str:
        """A spoken answer as an audio file in the thread (its words were posted before it).

        Raises:
            as ``send``.
        """
        team, channel = route["team"], route["channel"]
        token = await self._workspaces.token_for(team, route.get("enterprise", ""))
        await self._pace(team, channel)
        return await upload_bytes(
            self._api.client(), token=token, route=route, filename=note.name, title=VOICE_REPLY_TITLE, data=note.data
        )

    async def _post(self, token: str, route: Route, text: str, *, markdown: str | None = None) -> str:
        # With blocks, ``text`` is the fallback shown in notifications; parts rendered before
        # blocks (no hint in the ledger) go out as mrkdwn text, as they were rendered.
        blocks = [{"type": "markdown", "text": markdown}] if markdown else None
        with slack_errors("chat.postMessage"):
            response = await self._api.client().chat_postMessage(
                token=token,
                channel=route["channel"],
                thread_ts=route.get("thread_ts") or None,
                text=text,
                blocks=blocks,
                mrkdwn=True,
                # Link previews of every URL the bot cites would bury the answer.
                unfurl_links=False,
                unfurl_media=False,
            )
        return str(response.get("ts") or "")

    async def _send_attachment(self, token: str, route: Route, attachment: ReplyAttachment) -> str:
        if attachment.size > MAX_UPLOAD_BYTES or self._fetch_ocs_file is None:
            return await self._post(token, route, _link_text(attachment))
        try:
            data = await self._fetch_ocs_file(attachment)
        except AttachmentUnavailable as exc:
            log.warning("reply attachment %s not fetched, posting its link: %s", attachment.name, exc.reason)
            return await self._post(token, route, _link_text(attachment))
        if len(data) > MAX_UPLOAD_BYTES:
            return await self._post(token, route, _link_text(attachment))
        return await upload_file(self._api.client(), token=token, route=route, attachment=attachment, data=data)

    async def _pace(self, team: str, channel: str) -> None:
        key = self._keys.pace(self._name, team, channel)
        slot = await take_slot(self._redis, key, PACE_INTERVAL_S, max_wait_s=MAX_INLINE_WAIT_S)
        if not slot.granted:
            raise PacingWait(slot.wait_s, "pacing: about one message per second per channel")
        if slot.wait_s > 0:
            await asyncio.sleep(slot.wait_s)

    # -- working state ----------------------------------------------------------------------------

    async def show_working(self, route: Route) -> None:
        """"is thinking…" as the thread's status, else ⏳ on the user's message; called again,
        it keeps the status alive (the progress line it shows, if any). Best effort: a failure
        never fails the turn."""
        key = _working_key(route)
        as_status = await self._set_status(route, self._status.current(route) or WORKING_STATUS)
        reacted = self._as_status.get(key) is False
        _remember(self._as_status, key, as_status)
        if not as_status and not reacted:
            await self._reaction("reactions_add", route)

    async def show_progress(self, route: Route, text: str) -> bool:
        """OCS's progress line as the thread's status; False where there is none (no thread,
        refused, ``show_progress: false``), and the reaction stays. Never raises."""
        return await self._set_status(route, text)

    async def clear_working(self, route: Route) -> None:
        """Clear a status no answer cleared, and remove the ⏳ reaction unless this process
        showed a status instead (another process's reaction is removed as before). Best effort."""
        as_status = self._as_status.pop(_working_key(route), False)
        try:
            token = await self._workspaces.token_for(route["team"], route.get("enterprise", ""))
        except DeliveryError as exc:
            log.debug("slack clear_working on %s skipped: %s", self._name, exc)
            return
        await self._status.clear(token, route)
        if not as_status:
            await self._reaction("reactions_remove", route, token)

    async def _set_status(self, route: Route, text: str) -> bool:
        if not self._show_progress or not self._status.usable(route):
            return False
        try:
            token = await self._workspaces.token_for(route["team"], route.get("enterprise", ""))
        except DeliveryError as exc:
            log.debug("slack status on %s skipped: %s", self._name, exc)
            return False
        return await self._status.set(token, route, text)

    async def _reaction(self, method: str, route: Route, token: str | None = None) -> None:
        if not route.get("reply_to"):
            return  # slash commands and pushes have no user message to react to
        try:
            if token is None:
                token = await self._workspaces.token_for(route["team"], route.get("enterprise", ""))
            with slack_errors(method):
                call = getattr(self._api.client(), method)
                await call(token=token, channel=route["channel"], timestamp=route["reply_to"], name=WORKING_REACTION)
        except DeliveryError as exc:
            # already_reacted / no_reaction / missing reactions:write: the answer matters, not this.
            log.debug("slack %s on %s skipped: %s", method, self._name, exc)


def _working_key(route: Route) -> tuple[str, str, str]:
    return route.get("team", ""), route.get("channel", ""), route.get("reply_to") or route.get("thread_ts", "")


def _remember(memory: OrderedDict[tuple[str, str, str], bool], key: tuple[str, str, str], value: bool) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > _REMEMBERED:
        memory.popitem(last=False)


def _link_text(attachment: ReplyAttachment) -> str:
    return f"📎 <{attachment.content_url}|{escape(attachment.name)}> ({attachment.size // 1024} KB)"
