"""Which token speaks for a Slack workspace, and who the bot is there.

A channel runs in one of two modes (docs/SLACK.md): *single workspace* with ``bot_token`` from the
environment, or *OAuth* where every workspace that installs the app gets its own bot token,
stored in Redis per team (PROTOCOLS.md §2.7). Both answer the same two questions here:
``token_for(team)`` for sending and ``identity_for(team)`` (the bot's user id and bot id, from
``auth.test``) for recognising the app's own messages (§2.5). An OAuth installation stores its
identity at install time; the single-workspace token asks ``auth.test`` once per process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, fields

import redis.asyncio as aioredis

from adapters.slack.api import SlackApi, slack_errors
from gateway.core.errors import DeliveryError, RecipientGone
from gateway.core.keys import Keys

__all__ = ["Identity", "Installation", "InstallationStore", "Workspaces"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Identity:
    """The bot as Slack knows it in one workspace (``auth.test``)."""

    team_id: str
    user_id: str
    bot_id: str


@dataclass(frozen=True, slots=True)
class Installation:
    """One workspace's installation of the app. ``team_id`` is the enterprise id for an org-wide
    install, where Slack gives no team (§2.7)."""

    team_id: str
    bot_token: str
    bot_user_id: str
    bot_id: str
    enterprise_id: str = ""
    team_name: str = ""
    app_id: str = ""
    scope: str = ""
    installed_at: float = 0.0

    @property
    def identity(self) -> Identity:
        return Identity(team_id=self.team_id, user_id=self.bot_user_id, bot_id=self.bot_id)

    def to_hash(self) -> dict[str, str]:
        return {name: str(value) for name, value in asdict(self).items()}

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> Installation:
        known = {f.name for f in fields(cls)}
        values: dict[str, object] = {k: v for k, v in data.items() if k in known}
        values["installed_at"] = float(data.get("installed_at") or 0.0)
        return cls(**values)  # type: ignore[arg-type]


class InstallationStore:
    """Installations of one channel's app, one Redis hash per team (``slack:install:...``)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, channel: str) -> None:
        self._redis = redis
        self._keys = keys
        self._channel = channel

    async def save(self, installation: Installation) -> None:
        key = self._keys.slack_installation(self._channel, installation.team_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)  # a reinstall replaces every field, including a new token
            pipe.hset(key, mapping=installation.to_hash())  # type: ignore[arg-type]  # redis-py's invariant key type
            await pipe.execute()

    async def find(self, team_id: str, enterprise_id: str = "") -> Installation | None:
        """The workspace's installation, else its organisation's (org-wide install)."""
        for candidate in (team_id, enterprise_id):
            if not candidate:
                continue
            raw = await self._redis.hgetall(self._keys.slack_installation(self._channel, candidate))
            if raw:
                return Installation.from_hash({_text(k): _text(v) for k, v in raw.items()})
        return None

    async def delete(self, team_id: str) -> bool:
        return bool(await self._redis.delete(self._keys.slack_installation(self._channel, team_id)))


class Workspaces:
    """Tokens and identities for the workspaces one channel serves."""

    #: How long a single-workspace identity from auth.test is trusted before asking again.
    IDENTITY_TTL_S = 3600.0

    def __init__(self, *, api: SlackApi, store: InstallationStore, bot_token: str | None) -> None:
        self._api = api
        self.store = store
        self._bot_token = bot_token
        self._identity: tuple[float, Identity] | None = None

    async def token_for(self, team_id: str, enterprise_id: str = "") -> str:
        """The bot token to use in this workspace.

        Raises:
            RecipientGone: no installation (the app was uninstalled) and no single-workspace token.
        """
        installation = await self.store.find(team_id, enterprise_id)
        if installation is not None:
            return installation.bot_token
        if self._bot_token:
            return self._bot_token
        raise RecipientGone(f"the app is not installed in workspace {team_id}")

    async def serves(self, team_id: str, enterprise_id: str = "") -> bool:
        """Whether this channel may answer in the workspace: installed there, or single-workspace."""
        return bool(self._bot_token) or await self.store.find(team_id, enterprise_id) is not None

    async def identity_for(self, team_id: str, enterprise_id: str = "") -> Identity | None:
        """Who the bot is in this workspace, or None when Slack cannot tell us right now."""
        installation = await self.store.find(team_id, enterprise_id)
        if installation is not None:
            return installation.identity
        if not self._bot_token:
            return None
        if self._identity is not None and time.monotonic() - self._identity[0] < self.IDENTITY_TTL_S:
            return self._identity[1]
        try:
            identity = await self.auth_test(self._bot_token)
        except DeliveryError as exc:
            log.warning("slack auth.test failed (%s); treating every bot message as our own", exc)
            return None
        self._identity = (time.monotonic(), identity)
        return identity

    async def auth_test(self, token: str) -> Identity:
        """Ask Slack who ``token`` is (``auth.test``: ``user_id``, ``bot_id``, ``team_id``).

        Raises:
            DeliveryError: as ``slack_errors`` maps it (``invalid_auth`` → RecipientGone...).
        """
        with slack_errors("auth.test"):
            response = await self._api.client().auth_test(token=token)
        return Identity(
            team_id=str(response.get("team_id") or ""),
            user_id=str(response.get("user_id") or ""),
            bot_id=str(response.get("bot_id") or ""),
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
