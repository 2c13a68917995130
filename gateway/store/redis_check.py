"""The start-up check of the Redis a process is given: will it keep what the edge acknowledges?

The edge answers 200 once Redis has replied to the admission script, so "acknowledged means
durable" holds only if Redis writes to disk before it replies: ``appendonly yes`` with
``appendfsync always`` (Redis then fsyncs the append-only file before sending the replies of
each event-loop iteration, so concurrent requests share one fsync). We do not use ``WAITAOF``
(Redis 7.2+; the redis-server we ship is 6.2) or ``WAIT`` for a replica: one mechanism that
every supported server has, tested the same way everywhere.

A Redis that evicts keys under memory pressure would drop queued messages, turn ledgers, leases
and dedup claims at random, so that is a refusal whatever the config says. Managed Redis often
disables ``CONFIG``: then the check says it cannot verify, and the operator checks the provider.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from gateway.core.errors import ConfigError

__all__ = ["RedisSettings", "RedisVerdict", "UnsafeRedis", "assess", "check_redis", "read_settings"]

log = logging.getLogger("ocsgw.redis")

_FIX_DURABLE = (
    "Fix: run Redis with `appendonly yes` and `appendfsync always` (redis.conf or the command line; "
    "on a running server CONFIG SET appendonly yes, CONFIG SET appendfsync always, CONFIG REWRITE)"
)


class UnsafeRedis(ConfigError):
    """Raised at start-up when the Redis given would lose or evict what the gateway stores."""


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """The settings that decide whether acknowledged messages survive (CONFIG GET values)."""

    appendonly: str
    appendfsync: str
    save: str
    maxmemory_policy: str
    #: "yes" skips fsyncs while the AOF is being rewritten, "always" or not.
    no_appendfsync_on_rewrite: str = "no"


@dataclass(frozen=True, slots=True)
class RedisVerdict:
    """What the check concluded. ``settings`` is None when they could not be read."""

    settings: RedisSettings | None
    refusals: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def durable_ack(self) -> bool:
        """True when a reply from Redis means the write is on disk."""
        s = self.settings
        return (s is not None and s.appendonly == "yes" and s.appendfsync == "always"
                and s.no_appendfsync_on_rewrite == "no")


async def read_settings(redis: aioredis.Redis) -> RedisSettings | None:
    """CONFIG GET the settings; None when CONFIG is disabled or not permitted.

    Raises:
        RedisError: Redis could not be reached.
    """
    try:
        found: dict[str, str] = {}
        for name in ("appendonly", "appendfsync", "save", "maxmemory-policy", "no-appendfsync-on-rewrite"):
            reply = await redis.config_get(name)
            found.update({_text(k): _text(v) for k, v in reply.items()})
    except ResponseError:
        # "unknown command" (renamed away) or NOPERM (ACL): a managed Redis.
        return None
    return RedisSettings(
        appendonly=found.get("appendonly", "no"),
        appendfsync=found.get("appendfsync", "everysec"),
        save=found.get("save", ""),
        maxmemory_policy=found.get("maxmemory-policy", "noeviction"),
        no_appendfsync_on_rewrite=found.get("no-appendfsync-on-rewrite", "no"),
    )


def assess(settings: RedisSettings | None, *, require_durable: bool) -> RedisVerdict:
    """Judge ``settings``: an evicting policy is refused; a Redis that can lose acknowledged
    messages is a warning, or a refusal when ``require_durable``."""
    refusals: list[str] = []
    doubts: list[str] = []
    if settings is None:
        doubts.append(
            "CONFIG GET is not allowed on this Redis (a managed service?), so the gateway cannot verify "
            "that it persists acknowledged messages (appendonly yes, appendfsync always) or that it never "
            "evicts keys (maxmemory-policy noeviction); check those in the provider's settings"
        )
    else:
        if settings.maxmemory_policy != "noeviction":
            refusals.append(
                f"Redis maxmemory-policy is {settings.maxmemory_policy!r}: under memory pressure it deletes keys, "
                "losing queued messages, turn ledgers, leases and duplicate claims. Fix: set maxmemory-policy "
                "noeviction (CONFIG SET maxmemory-policy noeviction and in redis.conf, or the provider's setting)"
            )
        if settings.appendonly != "yes":
            snapshots = f"snapshots only (save {settings.save!r})" if settings.save else "no snapshots either"
            doubts.append(
                f"Redis has appendonly no ({snapshots}): a message acknowledged with 200 lives only in memory "
                f"and a Redis crash or restart loses it. {_FIX_DURABLE}"
            )
        elif settings.appendfsync != "always":
            doubts.append(
                f"Redis has appendfsync {settings.appendfsync}: it can reply before the write is on disk, so "
                f"messages acknowledged just before a Redis crash can be lost. {_FIX_DURABLE}"
            )
        elif settings.no_appendfsync_on_rewrite != "no":
            doubts.append(
                "Redis has no-appendfsync-on-rewrite yes: while it rewrites its append-only file it replies "
                "without fsyncing, so messages acknowledged then can be lost. Fix: no-appendfsync-on-rewrite no"
            )
    if require_durable:
        refusals += [f"{doubt} (require_durable_redis is true)" for doubt in doubts]
        doubts = []
    return RedisVerdict(settings, tuple(refusals), tuple(doubts))


async def check_redis(redis: aioredis.Redis, *, require_durable: bool) -> RedisVerdict:
    """Read and judge the Redis behind ``redis``; log every warning loudly. Call it at start-up
    of the web and worker processes.

    Raises:
        UnsafeRedis: an evicting policy, or (with ``require_durable``) a Redis that can lose
            acknowledged messages or cannot be checked.
    """
    try:
        settings = await read_settings(redis)
    except (RedisError, OSError) as exc:
        if require_durable:
            raise UnsafeRedis(f"cannot check Redis at start-up ({exc}) and require_durable_redis is true") from exc
        log.warning("could not check Redis at start-up (%s); the check runs again at the next start", exc)
        return RedisVerdict(None, (), ())
    verdict = assess(settings, require_durable=require_durable)
    for warning in verdict.warnings:
        log.warning("ACKNOWLEDGED MESSAGES CAN BE LOST: %s", warning)
    if verdict.refusals:
        raise UnsafeRedis("refusing to start: " + "; ".join(verdict.refusals))
    return verdict


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
