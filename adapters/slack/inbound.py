"""Slack → ``Inbound``: check the signature, read the Events API envelope, keep what the bot should
answer and drop the rest (its own messages, other bots, edits, joins).

What the bot answers (issue #4): direct messages (``message.im``), mentions (``app_mention``), and
plain replies in threads it is part of (``threads.py``); with the assistant on, each assistant
thread of a DM is a conversation of its own, and ``assistant_thread_started`` only offers the
suggested prompts (``assistant.py``). One user message can arrive twice under
two event ids (``app_mention`` and ``message.channels``), so each inbound carries the alias
``msg:{team}:{channel}:{ts}`` and the edge's dedup makes it one turn (docs/PLATFORMS.md §2.4). Retries
(``X-Slack-Retry-Num``) keep their ``event_id`` and meet the same dedup, never dropped blindly:
the first delivery may have been refused with a 503.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from adapters.slack.assistant import AssistantThreads, read_thread
from adapters.slack.config import SlackChannelConfig
from adapters.slack.format import slack_to_text
from adapters.slack.threads import ThreadTracker
from adapters.slack.workspaces import Identity, Workspaces
from gateway.core import safe_json
from gateway.core.channel import InboundRequest
from gateway.core.errors import PayloadInvalid, SignatureInvalid
from gateway.core.models import (
    Attachment,
    ConversationKey,
    Inbound,
    InboundKind,
    ParsedRequest,
)

__all__ = ["EventParser", "SIGNATURE_WINDOW_S", "conversation_for", "verify_signature"]

log = logging.getLogger(__name__)

#: Slack's replay window: a timestamp further than this from now is refused (docs/PLATFORMS.md §2.1).
SIGNATURE_WINDOW_S = 300

#: Called with (team, enterprise, org-wide install?, event) for app_uninstalled / tokens_revoked.
RevocationHandler = Callable[[str, str, bool, Mapping[str, Any]], Awaitable[None]]

# Message subtypes that carry a user's words; everything else (message_changed, message_deleted,
# channel_join, ...) is ignored (docs/PLATFORMS.md §2.5). bot_message is added when other bots are welcome.
_USER_SUBTYPES = frozenset({"", "file_share", "thread_broadcast"})
_LEADING_MENTION = re.compile(r"^\s*<@[A-Z0-9]+(?:\|[^>]*)?>")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def verify_signature(signing_secret: str, request: InboundRequest) -> None:
    """Check ``X-Slack-Signature`` over the raw body and the 300 s timestamp window (docs/PLATFORMS.md §2.1).

    Raises:
        SignatureInvalid: a header is missing, the timestamp is stale, or the HMAC differs.
    """
    timestamp = request.headers.get("x-slack-request-timestamp", "")
    signature = request.headers.get("x-slack-signature", "")
    if not timestamp or not signature:
        raise SignatureInvalid("missing X-Slack-Signature or X-Slack-Request-Timestamp")
    # ASCII digits of a sane length only: int() also takes "١٢" and 4,000 digits, and a huge
    # int minus a float time raises OverflowError.
    if not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureInvalid("X-Slack-Request-Timestamp is not a number")
    now = request.received_at or time.time()
    if abs(now - int(timestamp)) > SIGNATURE_WINDOW_S:
        raise SignatureInvalid("X-Slack-Request-Timestamp is more than 5 minutes away (replay?)")
    # The HMAC runs over the raw bytes: slack_sdk's SignatureVerifier decodes the body as UTF-8
    # first, so a non-UTF-8 body crashed it before the signature was known to be wrong (issue 8).
    base = b"v0:" + timestamp.encode() + b":" + request.body
    expected = "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise SignatureInvalid("X-Slack-Signature does not match the body")


def conversation_for(
    *, team: str, channel: str, is_dm: bool, root_ts: str, per_channel: bool, dm_thread: str = ""
) -> str:
    """The conversation id: one per DM (a DM channel is one user with the bot), one per
    assistant thread of a DM (``dm_thread``, its ``thread_ts``), one per thread in channels (its
    root ``ts``), or one per channel with ``channel_conversation: per_channel``.

    Raises:
        PayloadInvalid: a part holds a newline, which a ``ConversationKey`` may not.
    """
    if "\n" in team + channel + root_ts + dm_thread:
        raise PayloadInvalid("team, channel and ts cannot contain a newline")
    if is_dm:
        return f"T:{team}:D:{channel}:{dm_thread}" if dm_thread else f"T:{team}:D:{channel}"
    if per_channel:
        return f"T:{team}:C:{channel}"
    return f"T:{team}:C:{channel}:{root_ts}"


class EventParser:
    """Parses verified requests of one Slack channel into ``ParsedRequest`` values."""

    def __init__(
        self,
        *,
        name: str,
        config: SlackChannelConfig,
        workspaces: Workspaces,
        threads: ThreadTracker,
        on_revoked: RevocationHandler,
        assistant: AssistantThreads | None = None,
    ) -> None:
        self._name = name
        self._config = config
        self._workspaces = workspaces
        self._threads = threads
        self._on_revoked = on_revoked
        self._assistant = assistant
        self._subtypes = _USER_SUBTYPES if config.ignore_other_bots else _USER_SUBTYPES | {"bot_message"}

    async def parse(self, request: InboundRequest) -> ParsedRequest:
        """Raises: PayloadInvalid: the body is neither an Events API envelope nor a slash command."""
        content_type = request.headers.get("content-type", "")
        if "x-www-form-urlencoded" in content_type or (request.body[:1] not in (b"{", b"[") and b"=" in request.body):
            return self._form(request)
        envelope = safe_json.loads(request.body)
        if not isinstance(envelope, dict):
            raise PayloadInvalid("the body is not a JSON object")
        kind = envelope.get("type")
        if kind == "url_verification":
            challenge = envelope.get("challenge")
            if not isinstance(challenge, str):
                raise PayloadInvalid("url_verification without a challenge")
            return ParsedRequest(response={"challenge": challenge})  # docs/PLATFORMS.md §2.2, the JSON form Bolt uses
        if kind == "event_callback":
            return await self._event_callback(envelope, request)
        if kind == "app_rate_limited":
            # Over 30,000 events/hour/workspace Slack drops events and tells us so (docs/PLATFORMS.md §2.4).
            log.warning("slack channel %s: Slack is rate limiting events for team %s", self._name, envelope.get("team_id"))
        return ParsedRequest()

    # -- Events API -------------------------------------------------------------------------------

    async def _event_callback(self, envelope: Mapping[str, Any], request: InboundRequest) -> ParsedRequest:
        event = envelope.get("event")
        event_id = envelope.get("event_id")
        if not isinstance(event, dict) or not isinstance(event_id, str) or not isinstance(event.get("type"), str):
            raise PayloadInvalid("event_callback without event, event.type or event_id")
        team, enterprise = _installation_team(envelope)
        if not team:
            raise PayloadInvalid("event_callback without team_id")
        event_type = event["type"]
        if event_type in ("app_uninstalled", "tokens_revoked"):
            # Deleting is idempotent, so doing it at the edge is safe under Slack's retries.
            await self._on_revoked(team, enterprise, _org_wide(envelope), event)
            return ParsedRequest()
        if event_type == "assistant_thread_started":
            await self._thread_started(event, team, enterprise)
            return ParsedRequest()  # no one said anything yet: nothing for OCS
        if event_type not in ("app_mention", "message"):
            return ParsedRequest()  # assistant_thread_context_changed among them: its context is not used
        inbound = await self._message(event_id, event, team, enterprise, request, _envelope_identity(envelope, team))
        return ParsedRequest(inbounds=(inbound,)) if inbound is not None else ParsedRequest()

    async def _thread_started(self, event: Mapping[str, Any], team: str, enterprise: str) -> None:
        if self._assistant is None or not self._assistant.enabled:
            return
        thread = read_thread(event)
        if await self._workspaces.serves(team, enterprise):
            self._assistant.thread_started(team, enterprise, thread)

    async def _message(
        self,
        event_id: str,
        event: Mapping[str, Any],
        team: str,
        enterprise: str,
        request: InboundRequest,
        envelope_identity: Identity | None,
    ) -> Inbound | None:
        subtype = _text(event, "subtype", where="event.")
        if event.get("hidden") or subtype not in self._subtypes:
            return None
        for name in ("text", "thread_ts", "channel_type", "user", "bot_id"):
            _text(event, name, where="event.")  # wrong types are refused here, not half-used below
        channel, ts = event.get("channel"), event.get("ts")
        if not isinstance(channel, str) or not isinstance(ts, str):
            raise PayloadInvalid("message event without channel or ts")
        if not await self._workspaces.serves(team, enterprise):
            # Uninstalled (or never installed) there: an answer could not be delivered anyway.
            log.info("slack channel %s: event from team %s, where the app is not installed", self._name, team)
            return None
        # Never Slack on this path: the stored or background-learnt identity, else the bot user
        # the envelope names (Slack was down since start-up; issue 10).
        identity = await self._workspaces.identity_for(team, enterprise) or envelope_identity
        if self._is_own_or_bot(event, subtype, identity):
            return None
        bot_user = identity.user_id if identity else None
        is_mention = event["type"] == "app_mention"
        raw_text = str(event.get("text") or "")
        # app_mention has no channel_type; DM channel ids start with D (docs/PLATFORMS.md §2.5).
        is_dm = (event.get("channel_type") or ("im" if channel.startswith("D") else "channel")) == "im"
        thread_ts = str(event.get("thread_ts") or "")
        root_ts = thread_ts or ts
        if not is_dm:
            if is_mention or (bot_user and f"<@{bot_user}" in raw_text):
                await self._threads.join(team, channel, root_ts)
            elif not (thread_ts and await self._threads.is_joined(team, channel, thread_ts)):
                return None  # channel chatter not addressed to the bot
        if is_mention and not bot_user:
            raw_text = _LEADING_MENTION.sub("", raw_text, count=1)
        text = slack_to_text(raw_text, drop_user=bot_user)
        attachments = _attachments(event)
        kind = InboundKind.RESET if text.casefold() == self._config.reset_keyword.casefold() else InboundKind.MESSAGE
        if kind is InboundKind.MESSAGE and not text and not attachments:
            return None
        sender = str(event.get("user") or event.get("bot_id") or "")
        route = {"team": team, "channel": channel, "reply_to": ts}
        if enterprise:
            route["enterprise"] = enterprise
        if thread_ts or not is_dm:
            route["thread_ts"] = root_ts  # always answer in the thread in channels (docs/PLATFORMS.md §2.5)
        # With the assistant on, a thread in the DM is an assistant thread: a conversation of its own.
        assistant_thread = thread_ts if is_dm and self._assistant is not None and self._assistant.enabled else ""
        conversation = conversation_for(
            team=team, channel=channel, is_dm=is_dm, root_ts=root_ts,
            per_channel=self._config.channel_conversation == "per_channel", dm_thread=assistant_thread,
        )  # fmt: skip
        if assistant_thread and kind is InboundKind.MESSAGE and self._assistant is not None:
            await self._assistant.message(team, enterprise, channel, assistant_thread, text)
        return Inbound(
            key=ConversationKey(self._name, conversation),
            event_id=event_id,
            kind=kind,
            sender_id=sender,
            text=text if kind is InboundKind.MESSAGE else "",
            attachments=attachments if kind is InboundKind.MESSAGE else (),
            context={"slack_team_id": team, "slack_channel_id": channel, "slack_user_id": sender},
            route=route,
            alias_ids=(f"msg:{team}:{channel}:{ts}",),
            received_at=request.received_at or time.time(),
        )

    def _is_own_or_bot(self, event: Mapping[str, Any], subtype: str, identity: Identity | None) -> bool:
        # A modern app's own post has bot_id + user and NO subtype, so subtype alone would loop;
        # compare with auth.test's ids the way Bolt's IgnoringSelfEvents does (docs/PLATFORMS.md §2.5).
        bot_id, user = event.get("bot_id"), event.get("user")
        is_bot = bool(bot_id) or subtype == "bot_message"
        if identity is None:
            return is_bot  # cannot tell ours from theirs: silence beats a reply loop
        if (user and user == identity.user_id) or (bot_id and bot_id == identity.bot_id):
            return True
        return is_bot and self._config.ignore_other_bots

    # -- slash commands (form bodies on the same route) -------------------------------------------

    def _form(self, request: InboundRequest) -> ParsedRequest:
        try:
            form = {k: v[0] for k, v in parse_qs(request.body.decode(), keep_blank_values=True).items()}
        except UnicodeDecodeError:
            raise PayloadInvalid("the form body is not UTF-8") from None
        if "ssl_check" in form:
            return ParsedRequest()  # Slack's certificate probe: a 200 is all it wants
        if "command" not in form:
            return ParsedRequest()  # interactivity payloads: the bot has no buttons
        command, team, channel = form["command"], form.get("team_id", ""), form.get("channel_id", "")
        if not self._config.slash_command or command != self._config.slash_command:
            return ParsedRequest(response=_ephemeral(f"{command} is not set up for this bot."))
        if not team or not channel or not form.get("trigger_id"):
            raise PayloadInvalid("slash command without team_id, channel_id or trigger_id")
        is_dm = channel.startswith("D")
        per_channel = self._config.channel_conversation == "per_channel"
        if not is_dm and not per_channel:
            # Slash commands do not say which thread they were typed in, so a thread cannot be
            # named: the keyword inside the thread does that job.
            hint = f"In a channel, start a thread over by mentioning me with `{self._config.reset_keyword}` in it."
            return ParsedRequest(response=_ephemeral(hint))
        route = {"team": team, "channel": channel}
        if form.get("enterprise_id"):
            route["enterprise"] = form["enterprise_id"]
        inbound = Inbound(
            key=ConversationKey(
                self._name, conversation_for(team=team, channel=channel, is_dm=is_dm, root_ts="", per_channel=True)
            ),
            event_id=f"cmd:{form['trigger_id']}",
            kind=InboundKind.RESET,
            sender_id=form.get("user_id", ""),
            context={"slack_team_id": team, "slack_channel_id": channel, "slack_user_id": form.get("user_id", "")},
            route=route,
            received_at=request.received_at or time.time(),
        )
        return ParsedRequest(inbounds=(inbound,), response=_ephemeral("Starting over."))


def _installation_team(envelope: Mapping[str, Any]) -> tuple[str, str]:
    # authorizations[0] names the installation that received the event, which differs from the
    # envelope's team in shared channels; Bolt prefers it for the same reason (docs/PLATFORMS.md §2.3, §2.7).
    first = _first_authorization(envelope)
    team = _text(first, "team_id", where="authorizations.0.") or _text(envelope, "team_id")
    enterprise = _text(first, "enterprise_id", where="authorizations.0.") or _text(envelope, "enterprise_id")
    return team, enterprise


def _first_authorization(envelope: Mapping[str, Any]) -> Mapping[str, Any]:
    auths = envelope.get("authorizations")
    return auths[0] if isinstance(auths, list) and auths and isinstance(auths[0], dict) else {}


def _org_wide(envelope: Mapping[str, Any]) -> bool:
    """Whether the installation that received the event is an Enterprise Grid org-wide one."""
    return _first_authorization(envelope).get("is_enterprise_install") is True


def _envelope_identity(envelope: Mapping[str, Any], team: str) -> Identity | None:
    """The bot as the envelope names it: ``authorizations[0].user_id`` is the bot user of the
    installation that received the event when ``is_bot`` (docs/PLATFORMS.md §2.3). It has no bot id, which is
    enough: the app's own posts carry its bot user in ``user`` (docs/PLATFORMS.md §2.5)."""
    first = _first_authorization(envelope)
    user = first.get("user_id")
    if first.get("is_bot") is True and isinstance(user, str) and user:
        return Identity(team_id=team, user_id=user, bot_id="")
    return None


def _text(data: Mapping[str, Any], name: str, *, where: str = "") -> str:
    """``data[name]`` as text: "" when absent or null.

    Raises:
        PayloadInvalid: the field is there but not a string.
    """
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PayloadInvalid(f"{where}{name}: expected a string, got {type(value).__name__}")
    return value


def _attachments(event: Mapping[str, Any]) -> tuple[Attachment, ...]:
    files = event.get("files") or []
    if not isinstance(files, list):
        raise PayloadInvalid(f"event.files: expected a list, got {type(files).__name__}")
    found = []
    for item in files:
        url = item.get("url_private_download") if isinstance(item, dict) else None
        if not url or item.get("mode") in ("tombstone", "hidden_by_limit") or item.get("is_external"):
            continue  # deleted, over the free-plan limit, or a link to Drive/Dropbox
        size = item.get("size")
        duration_ms = item.get("duration_ms")
        found.append(
            Attachment(
                ref=str(url),
                name=str(item.get("name") or item.get("title") or "file"),
                content_type=str(item.get("mimetype") or "application/octet-stream"),
                size=size if isinstance(size, int) else None,
                # A recorded audio clip may come as video/mp4 or audio/webm (docs/PLATFORMS.md §2.5).
                voice=item.get("subtype") == "slack_audio" or item.get("media_display_type") == "audio",
                duration_s=duration_ms / 1000 if isinstance(duration_ms, int) and duration_ms > 0 else None,
            )
        )
    return tuple(found)


def _ephemeral(text: str) -> dict[str, str]:
    """A slash command's reply, shown only to the user who typed it."""
    return {"response_type": "ephemeral", "text": text}
