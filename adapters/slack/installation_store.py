"""Bolt's installation and OAuth state stores, on our Redis.

``RedisInstallationStore`` implements slack_sdk's ``AsyncInstallationStore`` the way Bolt's
``AsyncOAuthFlow`` and its authorize/token-revocation code expect (docs/PLATFORMS.md §2.7): one Redis
hash per installation holds the bot (``bot``), the latest installation (``installation``) and each
user's installation (``user:{id}``), all as the JSON of slack_sdk's models. An installation is
keyed by its team id, or by its enterprise id when it is org-wide (Enterprise Grid, no team):
Slack's team and enterprise ids are unique on their own, and this is the key the hand-written store
before it used, so installations it saved are still read (``_legacy``) until a save of this store
replaces their flat fields.

``RedisOAuthStateStore`` keeps the one-time OAuth ``state`` for ten minutes; consuming it deletes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError
from slack_sdk.oauth.installation_store.async_installation_store import AsyncInstallationStore
from slack_sdk.oauth.installation_store.models.bot import Bot
from slack_sdk.oauth.installation_store.models.installation import Installation
from slack_sdk.oauth.state_store.async_state_store import AsyncOAuthStateStore

from adapters.slack.keys import SlackKeys
from gateway.core.keys import Keys
from gateway.store.lua import LuaScript

__all__ = ["RedisInstallationStore", "RedisOAuthStateStore", "installation_key"]

log = logging.getLogger(__name__)

_BOT, _LATEST, _USER = "bot", "installation", "user:"
#: Per refresh token (its digest), how many attempts presented it to Slack (tokens.py).
_ATTEMPTS = "rotation:attempts:"
#: The flat fields of the hand-written store before this one (``_legacy``).
_LEGACY_FIELDS = ("team_id", "bot_token", "bot_user_id", "bot_id", "enterprise_id", "team_name", "app_id", "scope", "installed_at")
_COUNT_IF_INSTALLED = LuaScript(
    "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return redis.call('HINCRBY', KEYS[1], ARGV[2], 1) end return 0"
)


def installation_key(enterprise_id: str | None, team_id: str | None, is_enterprise_install: bool | None) -> str:
    """The id an installation is stored under: the enterprise for an org-wide install, else the
    team (a team id alone is unique; Bolt's SQL store uses the pair only to index it)."""
    if is_enterprise_install or not team_id:
        return enterprise_id or ""
    return team_id


class RedisInstallationStore(AsyncInstallationStore):
    """The installations of one channel's Slack app."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, channel: str) -> None:
        self._redis = redis
        self._keys = SlackKeys.of(keys)
        self._channel = channel
        self._logger = log

    @property
    def logger(self) -> logging.Logger:
        return self._logger

    def key(self, workspace: str) -> str:
        return self._keys.installation(self._channel, workspace)

    # -- save -------------------------------------------------------------------------------------

    async def async_save(self, installation: Installation) -> None:
        await self._save(installation)

    async def async_save_bot(self, bot: Bot) -> None:
        await self._save(bot)

    async def _save(self, data: Installation | Bot) -> None:
        """Save an installation (its bot, latest and per-user rows) or a bot alone. The flat fields
        of a legacy installation in the same hash go in the same transaction: left there they
        would describe a bot this save replaced."""
        key = self.key(installation_key(data.enterprise_id, data.team_id, data.is_enterprise_install))
        fields: dict[str, str] = {}
        bot = data.to_bot() if isinstance(data, Installation) else data
        if bot.bot_token is not None:
            fields[_BOT] = json.dumps(bot.__dict__)
        if isinstance(data, Installation):
            row = json.dumps(data.__dict__)
            fields[_LATEST] = row
            fields[_USER + (data.user_id or "-")] = row
        if not fields:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]  # redis-py's invariant key type
            if _BOT in fields:
                pipe.hdel(key, *_LEGACY_FIELDS)
            await pipe.execute()

    async def save_refreshed(self, refreshed: Bot, *, spent: str) -> Bot | None:
        """Save a refreshed bot token pair if the installation still holds ``spent``, the refresh
        token Slack took for it; returns the bot stored afterwards (``refreshed``, or what another
        process or a reinstall saved meanwhile), None when the bot was uninstalled meanwhile.

        A compare-and-set on the hash (WATCH), not a lock: once Slack has answered, its pair is
        the only valid one, so it is saved however long the refresh took, unless the stored
        refresh token changed (a newer pair is stored) or the bot is gone (an uninstall must stay
        one)."""
        key = self.key(installation_key(refreshed.enterprise_id, refreshed.team_id, refreshed.is_enterprise_install))
        while True:  # a WatchError means another writer changed the hash: read it again
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(key)
                    raw = _decoded(await pipe.hgetall(key))
                    current = _bot_of(_view(raw))
                    if current is None or current.bot_refresh_token != spent:
                        return current
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                    pipe.hset(key, _BOT, json.dumps(refreshed.__dict__))
                    stale = [name for name in (*_LEGACY_FIELDS, _attempts_field(spent)) if name in raw]
                    if stale:
                        pipe.hdel(key, *stale)
                    await pipe.execute()
                    return refreshed
            except WatchError:
                continue

    async def count_refresh_attempt(self, bot: Bot) -> int:
        """Count an attempt to refresh with ``bot``'s refresh token, before it is sent: how many
        attempts presented that token so far, this one included, or 0 when the bot is no longer
        installed (an uninstall is not undone by the count, and needs no refresh).

        Slack refuses a spent refresh token, so its ``invalid_refresh_token`` means "uninstalled"
        only when no other attempt presented the token: one that is still in flight, or one that
        got no answer (a timeout, a dropped connection) after Slack had spent it."""
        key = self.key(installation_key(bot.enterprise_id, bot.team_id, bot.is_enterprise_install))
        return int(await _COUNT_IF_INSTALLED(self._redis, [key], [_BOT, _attempts_field(bot.bot_refresh_token or "")]))

    async def refresh_attempts(self, bot: Bot) -> int:
        """How many attempts presented ``bot``'s refresh token (``count_refresh_attempt``)."""
        key = self.key(installation_key(bot.enterprise_id, bot.team_id, bot.is_enterprise_install))
        return int(_text(await self._redis.hget(key, _attempts_field(bot.bot_refresh_token or ""))) or 0)

    # -- find -------------------------------------------------------------------------------------

    async def async_find_bot(
        self, *, enterprise_id: str | None, team_id: str | None, is_enterprise_install: bool | None = False
    ) -> Bot | None:
        return _bot_of(await self._fields(installation_key(enterprise_id, team_id, is_enterprise_install)))

    async def find_bot_for(self, team_id: str, enterprise_id: str = "") -> Bot | None:
        """The bot that serves ``team_id``: its own installation, else its organisation's org-wide
        one. Routes and envelopes name the team an event came from, not how the app was installed."""
        if team_id:
            bot = await self.async_find_bot(enterprise_id=enterprise_id or None, team_id=team_id)
            if bot is not None:
                return bot
        if enterprise_id:
            bot = await self.async_find_bot(enterprise_id=enterprise_id, team_id=None, is_enterprise_install=True)
            if bot is not None and bot.is_enterprise_install:
                return bot
        return None

    async def async_find_installation(
        self,
        *,
        enterprise_id: str | None,
        team_id: str | None,
        user_id: str | None = None,
        is_enterprise_install: bool | None = False,
    ) -> Installation | None:
        raw = await self._fields(installation_key(enterprise_id, team_id, is_enterprise_install))
        row = raw.get(_USER + user_id) if user_id is not None else raw.get(_LATEST)
        if row is None:
            return None
        installation = Installation(**json.loads(row))
        if _BOT in raw:
            # The bot may have been reinstalled or its token rotated (which saves the bot alone)
            # since this row was saved: the latest bot wins, as in slack_sdk's own stores
            # (bolt-python issue 664).
            bot = Bot(**json.loads(raw[_BOT]))
            installation.bot_id, installation.bot_user_id = bot.bot_id, bot.bot_user_id
            installation.bot_token, installation.bot_scopes = bot.bot_token, bot.bot_scopes
            installation.bot_refresh_token = bot.bot_refresh_token
            installation.bot_token_expires_at = bot.bot_token_expires_at
        return installation

    # -- delete -----------------------------------------------------------------------------------

    async def async_delete_bot(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        for workspace in _candidates(enterprise_id, team_id):
            # A legacy installation is its bot, nothing more: its flat fields go with it.
            await self._redis.hdel(self.key(workspace), _BOT, *_LEGACY_FIELDS)

    async def async_delete_installation(
        self, *, enterprise_id: str | None, team_id: str | None, user_id: str | None = None
    ) -> None:
        """Without ``user_id`` every installation row of the workspace goes; with it, that user's
        row, and the user token is cleared from the latest row if that user made it."""
        for workspace in _candidates(enterprise_id, team_id):
            key = self.key(workspace)
            raw = await self._fields(workspace)
            if user_id is None:
                doomed = [name for name in raw if name == _LATEST or name.startswith(_USER)]
                if doomed:
                    await self._redis.hdel(key, *doomed)
                continue
            await self._redis.hdel(key, _USER + user_id)
            latest = json.loads(raw[_LATEST]) if _LATEST in raw else None
            if latest is not None and latest.get("user_id") == user_id:
                for name in ("user_token", "user_refresh_token", "user_token_expires_at", "user_scopes"):
                    latest[name] = None
                await self._redis.hset(key, _LATEST, json.dumps(latest))

    async def async_delete_all(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        for workspace in _candidates(enterprise_id, team_id):
            await self._redis.delete(self.key(workspace))

    # -- listing (the operator's view) --------------------------------------------------------------

    async def installed(self, *, limit: int = 200, scan_calls: int = 20) -> tuple[list[Bot], bool]:
        """The bots installed for this channel, newest first, and whether the listing stopped
        early (more than ``limit``, or a SCAN capped at ``scan_calls`` calls of 500 keys: the
        console must stay cheap on a Redis holding many conversations)."""
        pattern = self.key("*")
        cursor: int | bytes = 0
        workspaces: list[str] = []
        for _ in range(scan_calls):
            cursor, found = await self._redis.scan(cursor=int(cursor), match=pattern, count=500)
            workspaces.extend(_text(key).rsplit(":", 1)[-1] for key in found)
            if not int(cursor) or len(workspaces) > limit:
                break
        partial = bool(int(cursor)) or len(workspaces) > limit
        bots: list[Bot] = []
        for workspace in workspaces[:limit]:
            raw = await self._fields(workspace)
            if _BOT in raw:
                bots.append(Bot(**json.loads(raw[_BOT])))
        bots.sort(key=lambda bot: bot.installed_at or 0.0, reverse=True)
        return bots, partial

    # -- reading ----------------------------------------------------------------------------------

    async def _fields(self, workspace: str) -> dict[str, str]:
        if not workspace:
            return {}
        return _view(_decoded(await self._redis.hgetall(self.key(workspace))))


def _decoded(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _view(fields: dict[str, str]) -> dict[str, str]:
    # A hash saved before this store has flat fields only; once a save of this store wrote ``bot``
    # (which also drops the flat fields), the flat ones, if any survive, are older.
    return _legacy(fields) if "bot_token" in fields and _BOT not in fields else fields


def _bot_of(fields: Mapping[str, str]) -> Bot | None:
    return Bot(**json.loads(fields[_BOT])) if _BOT in fields else None


def _attempts_field(refresh_token: str) -> str:
    # Names the refresh token without holding a second copy of it.
    return _ATTEMPTS + hashlib.sha256(refresh_token.encode()).hexdigest()[:32]


def _candidates(enterprise_id: str | None, team_id: str | None) -> list[str]:
    # Bolt deletes by the ids of the event's context: a team's own installation, or with no team
    # (an org-wide installation received it) the organisation's. Never both: a workspace leaving
    # does not uninstall its organisation.
    workspace = installation_key(enterprise_id, team_id, is_enterprise_install=False)
    return [workspace] if workspace else []


def _legacy(old: Mapping[str, str]) -> dict[str, str]:
    """An installation saved by the store before Bolt's (flat fields) as this store's fields."""
    enterprise = old.get("enterprise_id") or None
    org_wide = bool(enterprise) and old.get("team_id") == enterprise
    values: dict[str, Any] = {
        "app_id": old.get("app_id") or None,
        "enterprise_id": enterprise,
        "team_id": None if org_wide else old.get("team_id"),
        "team_name": old.get("team_name") or None,
        "bot_token": old["bot_token"],
        "bot_id": old.get("bot_id") or None,
        "bot_user_id": old.get("bot_user_id") or None,
        "bot_scopes": old.get("scope") or "",
        "is_enterprise_install": org_wide,
        "installed_at": float(old.get("installed_at") or 0.0),
    }
    bot = Bot(**values)
    return {_BOT: json.dumps(bot.__dict__)}


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


class RedisOAuthStateStore(AsyncOAuthStateStore):
    """One-time OAuth ``state`` values of one channel, each valid ``expiration_seconds``."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, channel: str, *, expiration_seconds: int = 600) -> None:
        self._redis = redis
        self._keys = SlackKeys.of(keys)
        self._channel = channel
        self.expiration_seconds = expiration_seconds

    @property
    def logger(self) -> logging.Logger:
        return log

    async def async_issue(self, *args: Any, **kwargs: Any) -> str:
        state = secrets.token_urlsafe(32)
        await self._redis.set(self._keys.oauth_state(state), self._channel, ex=self.expiration_seconds)
        return state

    async def async_consume(self, state: str) -> bool:
        """True once for a state this channel issued within its lifetime; GETDEL makes a second
        use (a replayed redirect) fail."""
        if not state:
            return False
        stored = await self._redis.getdel(self._keys.oauth_state(state))
        return stored is not None and _text(stored) == self._channel
