"""``SlackAdapter``: the Slack channel behind ``gateway.core.channel.ChannelAdapter``.

This class only wires the concepts together; each lives in its own module:

- ``inbound``: signature check, Events API parsing, filtering, conversation keys
- ``outbound``: rendering, sending with pacing, the working reaction
- ``files``: user files in, reply attachments out
- ``install``: the OAuth install routes and uninstall clean-up
- ``workspaces`` / ``threads``: per-workspace tokens and identities; threads the bot is in
- ``api``: the slack_sdk client and the translation of its errors
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from starlette.routing import BaseRoute

from adapters.slack.api import SlackApi
from adapters.slack.files import download_file
from adapters.slack.inbound import EventParser, verify_signature
from adapters.slack.install import OAuthInstaller
from adapters.slack.outbound import SlackSender, render
from adapters.slack.threads import ThreadTracker
from adapters.slack.workspaces import InstallationStore, Workspaces
from gateway.core.channel import (
    AdapterServices,
    ChannelAdapter,
    InboundFile,
    InboundRequest,
)
from gateway.core.config import BotConfig, SlackChannelConfig
from gateway.core.errors import AttachmentUnavailable, RecipientGone
from gateway.core.models import Attachment, Outgoing, ParsedRequest, Reply, Route

__all__ = ["SlackAdapter"]


class SlackAdapter(ChannelAdapter[SlackChannelConfig]):
    """A Slack app: Events API in at ``/slack/{channel}/events``, Web API out."""

    kind: ClassVar[str] = "slack"
    inbound_path: ClassVar[str] = "/slack/{channel}/events"
    #: One reaction stays on the message until the answer is out; nothing to refresh.
    working_refresh_s: ClassVar[float | None] = None

    def __init__(self, name: str, config: SlackChannelConfig, bot: BotConfig, services: AdapterServices) -> None:
        super().__init__(name, config, bot, services)
        self._api = SlackApi(config.api_base_url)
        bot_token = config.bot_token.reveal() if config.bot_token is not None else None
        store = InstallationStore(services.redis, services.keys, name)
        self._workspaces = Workspaces(api=self._api, store=store, bot_token=bot_token)
        threads = ThreadTracker(services.redis, services.keys, name)
        self._installer = OAuthInstaller(
            name=name, config=config, public_url=services.config.public_url, api=self._api,
            workspaces=self._workspaces, redis=services.redis, keys=services.keys,
        )  # fmt: skip
        self._parser = EventParser(
            name=name, config=config, workspaces=self._workspaces, threads=threads, on_revoked=self._installer.forget
        )
        self._sender = SlackSender(
            name=name, api=self._api, workspaces=self._workspaces, threads=threads,
            redis=services.redis, keys=services.keys, fetch_ocs_file=services.fetch_ocs_file,
        )  # fmt: skip

    async def aclose(self) -> None:
        await self._api.aclose()

    # -- edge -------------------------------------------------------------------------------------

    async def verify(self, request: InboundRequest) -> None:
        verify_signature(self.config.signing_secret.reveal(), request)

    async def parse(self, request: InboundRequest) -> ParsedRequest:
        return await self._parser.parse(request)

    def routes(self) -> list[BaseRoute]:
        return self._installer.routes()

    # -- workers ----------------------------------------------------------------------------------

    def render(self, reply: Reply) -> list[Outgoing]:
        return render(reply)

    async def send(self, route: Route, outgoing: Outgoing) -> str:
        return await self._sender.send(route, outgoing)

    async def download(self, attachment: Attachment, route: Route) -> InboundFile:
        try:
            token = await self._workspaces.token_for(route["team"], route.get("enterprise", ""))
        except RecipientGone as exc:
            raise AttachmentUnavailable(f"no token for the workspace: {exc.reason}") from exc
        return await download_file(self.services.http, attachment, token=token, api_base_url=self.config.api_base_url)

    async def show_working(self, route: Route) -> None:
        await self._sender.show_working(route)

    async def clear_working(self, route: Route) -> None:
        await self._sender.clear_working(route)

    def describe(self) -> Mapping[str, Any]:
        mode = "oauth" if self._installer.enabled else "single-workspace"
        return {**super().describe(), "mode": mode, "conversations": self.config.channel_conversation}
