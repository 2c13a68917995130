"""The bot token for a workspace, refreshed before it expires when the app rotates its tokens.

With token rotation on (docs/SLACK.md), Slack's bot tokens expire after 12 hours and each
``oauth.v2.access`` refresh (``grant_type=refresh_token``) returns a new token *and* a new refresh
token, the old refresh token then being spent. Every web and worker process sends with the same
installation, so ``TokenKeeper`` lets one process refresh at a time: it takes a Redis lock per
installation (``SET NX PX`` with an owner token, renewed while the refresh runs), re-reads the
installation (the previous holder may have just refreshed it), refreshes the bot token with Bolt's
``AsyncTokenRotator`` and saves the new pair with a compare-and-set on the refresh token it spent
(``RedisInstallationStore.save_refreshed``). The others wait for the saved token and use it.

The lock only avoids two refreshes at once; it is not what makes the save safe. Once Slack has
answered, its pair is the only valid one, so it is saved even when the lock expired meanwhile (a
slow call, a stalled loop, a Redis failover): the compare-and-set keeps a newer pair or an
uninstall that happened meanwhile. The one residue: a process killed between Slack's answer and
the save loses the pair, so the save comes before anything else and is shielded from cancellation.

Each attempt is counted per refresh token before it is sent, and sent once (no retry handlers: a
retry of a refresh that reached Slack can only be refused). Slack's ``invalid_refresh_token`` is
then taken for an uninstall (``RecipientGone``) only when no other attempt presented that token;
otherwise another attempt spent it (still in flight, or unanswered after a timeout) and the send
is retried (``RetryLater``), never marked gone by a network blip. Only the bot token is refreshed:
the gateway sends with no user token, and a failed user refresh must not discard the bot's pair.

Why not Bolt's ``AsyncInstallationStoreAuthorize``: it refreshes without any coordination between
processes and asks ``auth.test`` on every call; the identity it would return is stored at install
time already.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time

import aiohttp
import redis.asyncio as aioredis
from slack_sdk.errors import SlackClientError, SlackTokenRotationError
from slack_sdk.oauth.installation_store.models.bot import Bot
from slack_sdk.oauth.token_rotation.async_rotator import AsyncTokenRotator

from adapters.slack.api import TRANSIENT_RETRY_S, classify
from adapters.slack.installation_store import RedisInstallationStore, installation_key
from adapters.slack.keys import SlackKeys
from gateway.core.errors import RetryLater
from gateway.core.keys import Keys
from gateway.store.lease import KeyLease

__all__ = ["LOCK_TTL_S", "TokenKeeper"]

log = logging.getLogger(__name__)

#: Twice one oauth.v2.access call (the client's 15 s timeout, sent once: no retry handlers), and
#: renewed every third of it while the refresh runs, so another process refreshes only when this
#: one stalled or died.
LOCK_TTL_S = 30.0
#: How long a process waits for another one's refresh before it gives the send back as a retry.
WAIT_S = 20.0
_POLL_S = 0.05


class TokenKeeper:
    """Bot tokens of one channel's OAuth installations, refreshed once across processes."""

    def __init__(
        self,
        *,
        store: RedisInstallationStore,
        rotator: AsyncTokenRotator | None,
        redis: aioredis.Redis,
        keys: Keys,
        channel: str,
        refresh_before_s: float,
    ) -> None:
        self._store = store
        self._rotator = rotator
        self._redis = redis
        self._keys = SlackKeys.of(keys)
        self._channel = channel
        self._refresh_before_s = refresh_before_s

    async def bot_token(self, team_id: str, enterprise_id: str = "") -> str | None:
        """The bot token of the installation serving the team, refreshed first if it is due;
        None when the app is not installed there.

        Raises:
            RetryLater: Slack or another process's refresh is slow, or a refresh that may have
                reached Slack went unanswered; try again shortly.
            RecipientGone: Slack refused the refresh token (the app was uninstalled or revoked).
        """
        bot = await self._store.find_bot_for(team_id, enterprise_id)
        if bot is None:
            return None
        if not self._due(bot):
            return bot.bot_token
        return await self._refresh(bot)

    def _due(self, bot: Bot) -> bool:
        expires_at = bot.bot_token_expires_at
        return bool(bot.bot_refresh_token) and expires_at is not None and expires_at <= time.time() + self._refresh_before_s

    async def _find(self, like: Bot) -> Bot | None:
        return await self._store.async_find_bot(
            enterprise_id=like.enterprise_id, team_id=like.team_id, is_enterprise_install=like.is_enterprise_install
        )

    async def _refresh(self, seen: Bot) -> str | None:
        workspace = installation_key(seen.enterprise_id, seen.team_id, seen.is_enterprise_install)
        lock = self._keys.rotation_lock(self._channel, workspace)
        deadline = time.monotonic() + WAIT_S
        while True:
            held = KeyLease(self._redis, lock, LOCK_TTL_S)
            if await held.take():
                # Shielded: a send cancelled mid-refresh must not drop the pair Slack is issuing.
                work = asyncio.ensure_future(self._refresh_locked(seen, workspace, held))
                work.add_done_callback(_retrieve)
                return await asyncio.shield(work)
            # Another process is refreshing: its saved token is what we want.
            await asyncio.sleep(_POLL_S)
            current = await self._find(seen)
            if current is None:
                return None
            if not self._due(current) or current.bot_refresh_token != seen.bot_refresh_token:
                return current.bot_token
            if time.monotonic() > deadline:
                raise RetryLater(1.0, "waiting for another process to refresh the Slack token")

    async def _refresh_locked(self, seen: Bot, workspace: str, held: KeyLease) -> str | None:
        renewer = asyncio.create_task(_renew(held))
        try:
            # Re-read under the lock: the previous holder may have refreshed since our read.
            bot = await self._find(seen)
            if bot is None:
                return None
            if not self._due(bot) or bot.bot_refresh_token != seen.bot_refresh_token:
                return bot.bot_token
            return await self._rotate(bot, workspace)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await held.release()

    async def _rotate(self, bot: Bot, workspace: str) -> str | None:
        if self._rotator is None:
            raise RetryLater(60.0, "a rotating Slack token but no client_id/client_secret to refresh it")
        spent = bot.bot_refresh_token or ""
        if not await self._store.count_refresh_attempt(bot):
            return None  # uninstalled since our read
        minutes = int(self._refresh_before_s // 60) + 1
        try:
            refreshed = await _one_shot(self._rotator).perform_bot_token_rotation(bot=bot, minutes_before_expiration=minutes)
        except SlackTokenRotationError as exc:
            response = exc.api_error.response
            code = str((response.data if isinstance(response.data, dict) else {}).get("error") or "")
            log.warning("slack channel %s: token refresh for %s failed: %s", self._channel, workspace, code or "-")
            if code == "invalid_refresh_token":
                return await self._after_refusal(bot, workspace, exc)
            raise classify(code, status=response.status_code) from exc
        except (TimeoutError, SlackClientError, aiohttp.ClientError, OSError) as exc:
            # The request may have reached Slack and spent the refresh token; the attempt stays
            # counted, so the refusal the next attempt may get is not taken for an uninstall.
            log.warning("slack channel %s: token refresh for %s unanswered: %s", self._channel, workspace, type(exc).__name__)
            raise RetryLater(TRANSIENT_RETRY_S, f"oauth.v2.access: {type(exc).__name__}") from exc
        if refreshed is None or refreshed.bot_token is None:
            raise RetryLater(5.0, "Slack returned no refreshed bot token")
        stored = await self._store.save_refreshed(refreshed, spent=spent)
        if stored is refreshed:
            log.info("slack channel %s: refreshed the rotating bot token for %s", self._channel, workspace)
        elif stored is None:
            log.info("slack channel %s: %s was uninstalled during its token refresh", self._channel, workspace)
            return None
        else:
            log.warning("slack channel %s: a newer token for %s was stored during the refresh", self._channel, workspace)
        return stored.bot_token

    async def _after_refusal(self, bot: Bot, workspace: str, refusal: SlackTokenRotationError) -> str | None:
        """Slack refused the refresh token. Another attempt may have spent it: one that saved the
        new pair since our read, one still in flight (our lock was lost), or one that got no
        answer. Only when no other attempt presented it was the app uninstalled or revoked."""
        current = await self._find(bot)
        if current is None:
            return None
        if current.bot_refresh_token != bot.bot_refresh_token:
            return current.bot_token
        if await self._store.refresh_attempts(bot) > 1:
            log.error(
                "slack channel %s: the refresh token of %s was spent by another attempt; if this repeats, "
                "that attempt got no answer and the app must be reinstalled (/slack/%s/install)",
                self._channel, workspace, self._channel,
            )  # fmt: skip
            raise RetryLater(TRANSIENT_RETRY_S, "invalid_refresh_token after another refresh attempt") from refusal
        raise classify("invalid_refresh_token") from refusal


def _one_shot(rotator: AsyncTokenRotator) -> AsyncTokenRotator:
    """``rotator`` with a client that sends each call once: a blind retry of a refresh that
    reached Slack can only be refused (its refresh token is spent). A shallow copy of the shared
    client, so it keeps the session, base URL and timeout bound at start-up."""
    client = copy.copy(rotator.client)
    client.retry_handlers = []
    return AsyncTokenRotator(client_id=rotator.client_id, client_secret=rotator.client_secret, client=client)


async def _renew(held: KeyLease) -> None:
    """Keep the lock while the refresh runs; stop once it was lost (the save does not need it)."""
    while True:
        await asyncio.sleep(LOCK_TTL_S / 3)
        if not await held.renew():
            return


def _retrieve(task: asyncio.Future[str | None]) -> None:
    # A refresh whose caller was cancelled still ends; its exception must not go unretrieved.
    if not task.cancelled():
        task.exception()
