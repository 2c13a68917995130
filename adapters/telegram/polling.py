"""Telegram long polling (``mode: polling``): updates without a public URL.

The web process runs one ``Poller`` per polling channel (``TelegramAdapter.listen``). It asks
``getUpdates`` and stores every update with ``admit`` *before* it advances the offset: calling
getUpdates with ``offset = update_id + 1`` is what confirms an update to Telegram (docs/PLATFORMS.md
§1.3), so an update is confirmed only once Redis holds it. The next offset is kept in Redis as
well, so a restarted or replacement poller resumes where the last one stopped; an update stored
but not yet confirmed (a crash in between) comes back once and is dropped by admission's dedup.

An offset lives ``OFFSET_TTL_S`` after the last update, in Redis and in the poller alike: after
a week without updates Telegram's next ``update_id`` is random (docs/PLATFORMS.md §1.3), so an old
offset could sit above the new ids and confirm them unseen. Past that life the poller asks
without an offset, as a fresh poller would: Telegram then answers from the earliest unconfirmed
update (Bot API getUpdates), and anything seen before is dropped by the dedup.

Telegram lets one getUpdates run per bot (409 "terminated by other getUpdates request"), so the
replicas elect one poller with a Redis lease (``SET NX PX`` with an owner token, renewed in the
background, checked by Lua before every renewal, offset write and release). The others wait and
take over when the lease lapses. A webhook still set makes Telegram refuse getUpdates (409): the
poller logs the fix and keeps trying, so deleting the webhook is enough to start it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from telegram.error import Conflict, InvalidToken, RetryAfter, TelegramError

from adapters.telegram.keys import TelegramKeys
from adapters.telegram.outbound import retry_after_seconds
from gateway.core.channel import Admit
from gateway.core.errors import PayloadInvalid, StoreUnavailable
from gateway.core.keys import Keys, as_text
from gateway.core.models import Inbound
from gateway.store.lease import KeyLease
from gateway.store.lua import LuaScript

__all__ = ["PollLease", "Poller", "PollerSettings", "SavedOffset"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Fetches raw updates: ``fetch(offset, timeout_s)``; raises PTB's errors.
Fetch = Callable[[int | None, int], Awaitable[Sequence[Mapping[str, Any]]]]
#: Turns one raw update into inbound events (recording membership and migrations on the way).
Parse = Callable[[Mapping[str, Any]], Awaitable[Sequence[Inbound]]]
#: Wall-clock seconds (``time.time``); tests pass their own to jump across a silent week.
Clock = Callable[[], float]

#: An offset this old (counted from the last update) is forgotten, in Redis and in the poller:
#: Telegram keeps updates 24 h and may restart update ids after a week without updates
#: (docs/PLATFORMS.md §1.3); a day short of that week, so the offset is gone before the ids can restart.
OFFSET_TTL_S = 6 * 24 * 3600

# KEYS[1] lease, KEYS[2] offset; ARGV token, offset, ttl s. A poller that lost its lease must not
# move the new poller's offset back.
_SAVE_OFFSET = LuaScript("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
""")


@dataclass(frozen=True, slots=True)
class PollerSettings:
    """How one channel polls; ``backoff_*`` pace retries after Bot API or Redis failures."""

    channel: str
    bot_id: str
    timeout_s: int
    lease_ttl_s: float
    backoff_base_s: float = 0.5
    backoff_max_s: float = 15.0


@dataclass(frozen=True, slots=True)
class SavedOffset:
    """The next getUpdates offset in Redis and how much longer it is good for."""

    next_id: int
    ttl_s: float


class PollLease:
    """The one poller of a bot across replicas: a Redis key holding its owner's token."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, bot_id: str, ttl_s: float) -> None:
        self._redis = redis
        self._lease = KeyLease(redis, TelegramKeys.of(keys).poll_lease(bot_id), ttl_s)
        self._key = self._lease.key
        self._offset_key = TelegramKeys.of(keys).poll_offset(bot_id)
        self.token = self._lease.token

    async def acquire(self) -> bool:
        return await self._lease.take()

    async def renew(self) -> bool:
        return await self._lease.renew()

    async def release(self) -> None:
        await self._lease.release()

    async def load_offset(self) -> SavedOffset | None:
        """The saved offset with its remaining life (read together: a replica taking over on day 5
        of a silence must forget it a day later, not six)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self._offset_key)
            pipe.pttl(self._offset_key)
            value, ttl_ms = await pipe.execute()
        if value is None:
            return None
        # -1 (no expiry) is not written by this module; treat it as a full life.
        ttl_s = ttl_ms / 1000 if isinstance(ttl_ms, int) and ttl_ms >= 0 else float(OFFSET_TTL_S)
        return SavedOffset(int(as_text(value)), ttl_s)

    async def save_offset(self, offset: int) -> bool:
        """Store the next offset; False when this poller no longer holds the lease."""
        return bool(await _SAVE_OFFSET(self._redis, [self._key, self._offset_key], [self.token, offset, OFFSET_TTL_S]))


class _LostLease(Exception):
    """The lease lapsed or another replica holds it: stop polling at once."""


class Poller:
    """``await Poller(...).run(admit, stop)``: poll while holding the bot's lease, else wait."""

    def __init__(
        self, settings: PollerSettings, lease: PollLease, *, fetch: Fetch, parse: Parse, clock: Clock = time.time
    ) -> None:
        self._s = settings
        self._lease = lease
        self._fetch = fetch
        self._parse = parse
        # Wall time, not monotonic: Telegram's week is calendar time, and a suspended host's
        # monotonic clock stands still through it.
        self._clock = clock
        self._failures = 0

    async def run(self, admit: Admit, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; every failure is waited out, never raised."""
        while not stop.is_set():
            try:
                held = await self._lease.acquire()
            except (RedisError, OSError) as exc:
                log.warning("telegram %s: cannot reach Redis for the poller lease (%s)", self._s.channel, type(exc).__name__)
                await self._back_off(stop)
                continue
            if not held:
                # Another replica polls; look again well within the lease's life.
                await _wait(stop, self._s.lease_ttl_s / 3)
                continue
            log.info("telegram %s: this replica now polls the bot", self._s.channel)
            lost = asyncio.Event()
            keeper = asyncio.create_task(self._keep(lost, stop), name=f"poll-lease:{self._s.channel}")
            try:
                await self._poll(admit, stop, lost)
            except _LostLease:
                if not stop.is_set():
                    log.warning("telegram %s: lost the poller lease; another replica polls now", self._s.channel)
            except Exception:  # a bug here must not end the channel's only listener
                log.exception("telegram %s: the poller failed unexpectedly; restarting it", self._s.channel)
                await self._back_off(stop)
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
                if not lost.is_set():
                    with contextlib.suppress(RedisError, OSError):
                        await self._lease.release()

    async def _keep(self, lost: asyncio.Event, stop: asyncio.Event) -> None:
        """Renew the lease every third of its life; set ``lost`` when it surely is not ours."""
        last_ok = time.monotonic()
        while not stop.is_set():
            await _wait(stop, self._s.lease_ttl_s / 3)
            try:
                if not await self._lease.renew():
                    break
                last_ok = time.monotonic()
            except (RedisError, OSError):
                # Nobody can take it while Redis is down; past its life we must assume they can.
                if time.monotonic() - last_ok > self._s.lease_ttl_s * 0.9:
                    break
        lost.set()

    async def _poll(self, admit: Admit, stop: asyncio.Event, lost: asyncio.Event) -> None:
        saved = await self._retrying(self._lease.load_offset, stop, lost)
        offset = saved.next_id if saved is not None else None
        good_until = self._clock() + saved.ttl_s if saved is not None else 0.0
        while not stop.is_set():
            if lost.is_set():
                raise _LostLease
            if offset is not None and self._clock() >= good_until:
                # The Redis copy has expired too. Sending it on could confirm restarted (lower)
                # update ids unseen; sending none can only repeat updates, which the dedup drops.
                log.info(
                    "telegram %s: no update for %.0f days; polling without an offset (Telegram may have "
                    "restarted its update ids)", self._s.channel, OFFSET_TTL_S / 86400,
                )
                offset = None
            try:
                updates = await _first(self._fetch(offset, self._s.timeout_s), stop, lost)
            except Conflict as exc:
                self._report_conflict(exc)
                await self._back_off(stop)
                continue
            except InvalidToken:
                log.error("telegram %s: Telegram refused the bot token; check the channel's token", self._s.channel)
                await self._back_off(stop)
                continue
            except RetryAfter as exc:
                await _wait(stop, retry_after_seconds(exc))
                continue
            except TelegramError as exc:  # NetworkError, TimedOut, 5xx: Telegram is having trouble
                log.warning("telegram %s: getUpdates failed (%s); retrying", self._s.channel, type(exc).__name__)
                await self._back_off(stop)
                continue
            if updates is None:
                continue  # stopped or lost while waiting: the loop decides
            try:
                stored = await self._store(updates, admit, offset, lost)
                self._failures = 0
                if stored != offset:  # saved in Redis just now, with a fresh life
                    offset, good_until = stored, self._clock() + OFFSET_TTL_S
            except StoreUnavailable as exc:
                # Not confirmed: the next getUpdates from the unchanged offset fetches them again.
                log.warning("telegram %s: Redis did not take an update (%s); not confirmed, retrying", self._s.channel, exc)
                await self._back_off(stop)

    async def _store(
        self, updates: Sequence[Mapping[str, Any]], admit: Admit, offset: int | None, lost: asyncio.Event
    ) -> int | None:
        """Admit each update in order; returns the offset that confirms what is stored."""
        for raw in updates:
            update_id = raw.get("update_id")
            if not isinstance(update_id, int) or isinstance(update_id, bool):
                log.warning("telegram %s: getUpdates returned an update without an id; skipped", self._s.channel)
                continue
            try:
                inbounds = await self._parse(raw)
            except PayloadInvalid as exc:
                # A webhook would answer 400 and see it again; here it would block the bot forever.
                log.warning("telegram %s: update %d is malformed (%s); skipped", self._s.channel, update_id, exc)
                inbounds = ()
            for inbound in inbounds:
                if not await admit(inbound):
                    log.info("telegram %s: update %d was already stored", self._s.channel, update_id)
            offset = update_id + 1
            try:
                if not await self._lease.save_offset(offset):
                    lost.set()
                    raise _LostLease
            except (RedisError, OSError) as exc:
                raise StoreUnavailable("cannot save the getUpdates offset") from exc
        return offset

    def _report_conflict(self, exc: Conflict) -> None:
        if "webhook" in exc.message.lower():
            log.error(
                "telegram %s: a webhook is still set for this bot, so Telegram refuses getUpdates. "
                "Run `ocs-gateway telegram delete-webhook --channel %s` (polling starts by itself).",
                self._s.channel, self._s.channel,
            )
        else:
            log.warning(
                "telegram %s: another getUpdates runs for this bot (%s): is another gateway or program "
                "using this token outside this Redis?", self._s.channel, exc.message,
            )

    async def _retrying(self, call: Callable[[], Awaitable[_T]], stop: asyncio.Event, lost: asyncio.Event) -> _T:
        while True:
            if stop.is_set() or lost.is_set():
                raise _LostLease
            try:
                return await call()
            except (RedisError, OSError) as exc:
                log.warning("telegram %s: Redis unavailable (%s); retrying", self._s.channel, type(exc).__name__)
                await self._back_off(stop)

    async def _back_off(self, stop: asyncio.Event) -> None:
        self._failures += 1
        delay = min(self._s.backoff_base_s * 2 ** (self._failures - 1), self._s.backoff_max_s)
        await _wait(stop, delay)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` unless ``stop`` is set first."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.0))


async def _first(call: Awaitable[_T], *events: asyncio.Event) -> _T | None:
    """The result of ``call``, or None when one of ``events`` is set first (``call`` is then
    cancelled: a cancelled getUpdates confirms nothing, its updates come again)."""
    task = asyncio.ensure_future(call)
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait([task, *waiters], return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()  # the listener itself is being cancelled
        raise
    finally:
        for waiter in waiters:
            waiter.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, TelegramError):
        await task
    return None

