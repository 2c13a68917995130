"""Which token speaks for a Slack workspace, and who the bot is there.

A channel runs in one of two modes (docs/SLACK.md): *single workspace* with ``bot_token`` from the
environment, or *OAuth* where every workspace (or Enterprise Grid organisation) that installs the
app gets its own bot token, stored by ``RedisInstallationStore`` (docs/PLATFORMS.md §2.7). Both answer
the same questions here: ``token_for(team)`` for sending (refreshing rotating tokens through
``TokenKeeper``), ``serves(team)`` and ``identity_for(team)`` for the parser. None of the three
calls Slack on the events edge: an OAuth installation stores its identity at install time, and the
single-workspace identity is kept by ``BotIdentity`` in the background.
"""

from __future__ import annotations

import logging

from adapters.slack.api import SlackApi, slack_errors
from adapters.slack.identity import BotIdentity, Identity
from adapters.slack.installation_store import RedisInstallationStore
from adapters.slack.tokens import TokenKeeper
from gateway.core.errors import RecipientGone

__all__ = ["Identity", "Workspaces", "auth_test"]

log = logging.getLogger(__name__)


class Workspaces:
    """Tokens and identities for the workspaces one channel serves."""

    def __init__(
        self,
        *,
        store: RedisInstallationStore,
        tokens: TokenKeeper,
        bot_token: str | None,
        identity: BotIdentity | None,
    ) -> None:
        self.store = store
        self._tokens = tokens
        self._bot_token = bot_token
        self._identity = identity

    async def token_for(self, team_id: str, enterprise_id: str = "") -> str:
        """The bot token to use in this workspace.

        Raises:
            RecipientGone: no installation (the app was uninstalled) and no single-workspace token.
            RetryLater: a rotating token is being refreshed and Slack or the refresh is slow.
        """
        token = await self._tokens.bot_token(team_id, enterprise_id)
        if token:
            return token
        if self._bot_token:
            return self._bot_token
        raise RecipientGone(f"the app is not installed in workspace {team_id}")

    async def serves(self, team_id: str, enterprise_id: str = "") -> bool:
        """Whether this channel may answer in the workspace: installed there, or single-workspace."""
        return bool(self._bot_token) or await self.store.find_bot_for(team_id, enterprise_id) is not None

    async def identity_for(self, team_id: str, enterprise_id: str = "") -> Identity | None:
        """Who the bot is in this workspace, or None when that is not known yet (Slack did not
        answer ``auth.test`` since start-up). Never calls Slack."""
        bot = await self.store.find_bot_for(team_id, enterprise_id)
        if bot is not None:
            return Identity(team_id=team_id, user_id=bot.bot_user_id or "", bot_id=bot.bot_id or "")
        return self._identity.current if self._identity is not None else None


async def auth_test(api: SlackApi, token: str) -> Identity:
    """Ask Slack who ``token`` is (``auth.test``: ``user_id``, ``bot_id``, ``team_id``).

    Raises:
        DeliveryError: as ``slack_errors`` maps it (``invalid_auth`` → RecipientGone...).
    """
    with slack_errors("auth.test"):
        response = await api.client().auth_test(token=token)
    return Identity(
        team_id=str(response.get("team_id") or ""),
        user_id=str(response.get("user_id") or ""),
        bot_id=str(response.get("bot_id") or ""),
    )
