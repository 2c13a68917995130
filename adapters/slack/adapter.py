"""``SlackAdapter``: the Slack channel behind ``gateway.core.channel.ChannelAdapter``.

This class only wires the concepts together; each lives in its own module:

- ``inbound``: signature check, Events API parsing, filtering, conversation keys
- ``outbound``: rendering, sending with pacing, the working reaction
- ``files``: user files in, reply attachments out
- ``install``: the OAuth install routes (Bolt's ``AsyncOAuthFlow``) and uninstall clean-up
- ``installation_store``: Bolt's installation and OAuth state stores on Redis
- ``workspaces`` / ``tokens`` / ``identity``: per-workspace tokens (rotating ones refreshed once
  across processes) and the bot's identity; ``threads``: threads the bot is in
- ``api``: the slack_sdk client on the process's shared aiohttp session, and its errors
- ``socket_mode``: events over Slack's WebSocket instead of HTTP (``socket_mode: true``)
- ``status``: the thread's status while OCS works; ``assistant``: assistant threads' prompts and titles
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from functools import partial
from typing import Any, ClassVar

from slack_sdk.oauth.token_rotation.async_rotator import AsyncTokenRotator
from starlette.routing import BaseRoute

from adapters.slack.api import SlackApi
from adapters.slack.assistant import AssistantThreads
from adapters.slack.config import SlackChannelConfig
from adapters.slack.files import download_file
from adapters.slack.identity import BotIdentity
from adapters.slack.inbound import EventParser, verify_signature
from adapters.slack.install import STATE_TTL_S, OAuthInstaller
from adapters.slack.installation_store import RedisInstallationStore, RedisOAuthStateStore
from adapters.slack.outbound import SlackSender, render
from adapters.slack.socket_mode import SocketModeListener
from adapters.slack.threads import ThreadTracker
from adapters.slack.tokens import TokenKeeper
from adapters.slack.workspaces import Workspaces, auth_test
from gateway.core.channel import (
    AdapterServices,
    Admit,
    ChannelAdapter,
    InboundFile,
    InboundRequest,
    VoiceNote,
)
from gateway.core.config import BotConfig
from gateway.core.errors import AttachmentUnavailable, RecipientGone, UnknownChannel
from gateway.core.models import Attachment, Delivery, Outgoing, ParsedRequest, Reply, Route

__all__ = ["SlackAdapter"]


class SlackAdapter(ChannelAdapter[SlackChannelConfig]):
    """A Slack app: Events API in at ``/slack/{channel}/events``, Web API out."""

    kind: ClassVar[str] = "slack"
    inbound_path: ClassVar[str] = "/slack/{channel}/events"
    #: Slack drops a thread's status two minutes after it was set: refresh it before (a
    #: reaction stays on the message until the answer is out and is not added again).
    working_refresh_s: ClassVar[float | None] = 60.0
    #: A spoken answer is an MP3 file in the thread, which Slack's player plays on every client.
    voice_format: ClassVar[str | None] = "mp3"

    def __init__(self, name: str, config: SlackChannelConfig, bot: BotConfig, services: AdapterServices) -> None:
        super().__init__(name, config, bot, services)
        self._api = SlackApi(config.api_base_url)
        bot_token = config.bot_token.reveal() if config.bot_token is not None else None
        store = self._store = RedisInstallationStore(services.redis, services.keys, name)
        rotator = None
        if config.client_id is not None and config.client_secret is not None:
            rotator = AsyncTokenRotator(
                client_id=config.client_id, client_secret=config.client_secret.reveal(), client=self._api.client()
            )
        tokens = TokenKeeper(
            store=store, rotator=rotator, redis=services.redis, keys=services.keys, channel=name,
            refresh_before_s=config.token_rotation_expiration_minutes * 60.0,
        )  # fmt: skip
        # Single workspace: the bot's identity is learnt in the background, never on an event.
        self._identity = BotIdentity(partial(auth_test, self._api, bot_token)) if bot_token else None
        self._workspaces = Workspaces(store=store, tokens=tokens, bot_token=bot_token, identity=self._identity)
        threads = ThreadTracker(services.redis, services.keys, name)
        self._installer = OAuthInstaller(
            name=name, config=config, public_url=services.config.public_url, api=self._api, store=store,
            state_store=RedisOAuthStateStore(services.redis, services.keys, name, expiration_seconds=STATE_TTL_S),
        )  # fmt: skip
        self._assistant = AssistantThreads(
            name=name, config=config.assistant, api=self._api, workspaces=self._workspaces, threads=threads
        )
        self._parser = EventParser(
            name=name, config=config, workspaces=self._workspaces, threads=threads, on_revoked=self._installer.forget,
            assistant=self._assistant,
        )  # fmt: skip
        self._sender = SlackSender(
            name=name, api=self._api, workspaces=self._workspaces, threads=threads,
            redis=services.redis, keys=services.keys, fetch_ocs_file=services.fetch_ocs_file,
            show_progress=config.show_progress,
        )  # fmt: skip

    async def startup(self) -> None:
        self._api.open(self.services.aiohttp_session)
        if self._identity is not None:
            await self._identity.start()

    async def aclose(self) -> None:
        await self._assistant.aclose()  # its calls use the client: before the client goes
        if self._identity is not None:
            await self._identity.aclose()
        await self._api.aclose()

    # -- edge -------------------------------------------------------------------------------------

    async def verify(self, request: InboundRequest) -> None:
        if self.config.socket_mode or self.config.signing_secret is None:
            # Its app has no request URL, so whoever posts here is not Slack; and there may be
            # no signing secret to check them with.
            raise UnknownChannel(f"slack channel {self.name!r} receives over Socket Mode, not HTTP")
        verify_signature(self.config.signing_secret.reveal(), request)

    async def parse(self, request: InboundRequest) -> ParsedRequest:
        return await self._parser.parse(request)

    def routes(self) -> list[BaseRoute]:
        return self._installer.routes()

    async def listen(self, admit: Admit, stop: asyncio.Event) -> None:
        if not self.config.socket_mode or self.config.app_token is None:
            return  # events arrive over HTTP
        listener = SocketModeListener(
            name=self.name, app_token=self.config.app_token.reveal(), api_base_url=self.config.api_base_url,
            parse=self._parser.parse, session=self.services.aiohttp_session,
        )  # fmt: skip
        await listener.run(admit, stop)

    # -- workers ----------------------------------------------------------------------------------

    def render(self, reply: Reply) -> list[Outgoing]:
        return render(reply)

    async def send(self, route: Route, outgoing: Outgoing, delivery: Delivery | None = None) -> str:
        return await self._sender.send(route, outgoing, delivery)

    async def send_voice(self, route: Route, note: VoiceNote, delivery: Delivery | None = None) -> str:
        return await self._sender.send_voice(route, note)

    async def download(self, attachment: Attachment, route: Route, *, max_bytes: int | None = None) -> InboundFile:
        try:
            token = await self._workspaces.token_for(route["team"], route.get("enterprise", ""))
        except RecipientGone as exc:
            raise AttachmentUnavailable(f"no token for the workspace: {exc.reason}") from exc
        return await download_file(
            self.services.http, attachment, token=token, api_base_url=self.config.api_base_url, max_bytes=max_bytes
        )

    async def show_working(self, route: Route) -> None:
        await self._sender.show_working(route)

    async def show_progress(self, route: Route, text: str, turn_id: str) -> bool:
        # One status per thread: turn_id is not needed to tell two turns' lines apart.
        return await self._sender.show_progress(route, text)

    async def clear_working(self, route: Route) -> None:
        await self._sender.clear_working(route)

    async def status(self) -> Mapping[str, Any]:
        """For the console: the workspaces the app is installed in (OAuth) or whether the bot
        token works (single workspace), from Redis and the identity already known — no Slack
        call, so a hanging Slack never slows the console."""
        warnings: list[str] = []
        if not self._installer.enabled:
            identity = self._identity.current if self._identity is not None else None
            if identity is None:
                warnings.append("auth.test has not succeeded with the bot token yet (see the logs)")
            summary = f"workspace {identity.team_id}" if identity else ""
            return {"summary": summary, "workspaces": [identity.team_id] if identity else [], "warnings": warnings}
        bots, partial = await self._store.installed()
        now = time.time()
        workspaces = []
        for bot in bots:
            name = bot.enterprise_id if bot.is_enterprise_install else bot.team_id
            workspaces.append(f"{name} (org-wide)" if bot.is_enterprise_install else str(name))
            expires_at = bot.bot_token_expires_at
            if expires_at is not None and expires_at < now and not bot.bot_refresh_token:
                warnings.append(f"workspace {name}: its rotating token expired and there is no refresh token")
        if not bots:
            warnings.append("no workspace has installed the app yet (share /install)")
        shown = ", ".join(workspaces[:5]) + (", …" if len(workspaces) > 5 or partial else "")
        summary = f"{len(bots)}{'+' if partial else ''} workspace(s): {shown}" if bots else ""
        return {"summary": summary, "workspaces": workspaces, "installed": len(bots), "more": partial, "warnings": warnings}

    def describe(self) -> Mapping[str, Any]:
        mode = "oauth" if self._installer.enabled else "single-workspace"
        inbound = {"inbound": "socket_mode"} if self.config.socket_mode else {}
        assistant = {"assistant": "on"} if self.config.assistant.enabled else {}
        return {**super().describe(), "mode": mode, "conversations": self.config.channel_conversation, **inbound, **assistant}
