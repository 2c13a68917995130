"""The start-up check of the Redis a process is given: will it keep what the edge acknowledges?

The edge answers 200 once Redis has replied to the admission script, so "acknowledged means
durable" holds only if Redis writes to disk before it replies: ``appendonly yes`` with
``appendfsync always`` (Redis then fsyncs the append-only file before sending the replies of
each event-loop iteration, so concurrent requests share one fsync) — or, with
``durable_replicas: N``, if the gateway waits (``WAIT``) until N replicas hold each such write
(gateway/store/replication.py): then a lost primary loses nothing acknowledged, whatever its own
disk settings. ``durable_on_disk`` (``WAITAOF``) needs Redis 7.2, which the check verifies.

A Redis that evicts keys under memory pressure would drop queued messages, turn ledgers, leases
and dedup claims at random, so that is a refusal whatever the config says; the policy is read
from ``CONFIG GET``, or from ``INFO memory`` where ``CONFIG`` is disabled (managed services).

Every error reply to ``CONFIG GET`` is named for what it is, since each has its own fix: the
command disabled or renamed (a managed service), an ACL user without it (``NOPERM``), protected
mode (``DENIED``: Redis refuses clients from other hosts until it has a password), no password
given (``NOAUTH``) or a wrong one (``WRONGPASS``). The last three stop the process: nothing it
would do could work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from gateway.core.errors import ConfigError
from gateway.store.replication import NO_WAIT, Durability

__all__ = [
    "ConfigRefused", "RedisSettings", "RedisVerdict", "ServerFacts", "UnsafeRedis", "assess", "check_redis",
    "explain_refusal", "read_facts", "read_settings",
]

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
class ConfigRefused:
    """Redis answered ``CONFIG GET`` with an error: ``kind`` names the case, ``reply`` is what
    Redis said, ``fatal`` when nothing else the process would send can work either."""

    kind: str
    reply: str
    explanation: str
    fatal: bool = False


def explain_refusal(exc: RedisError) -> ConfigRefused:
    """Name the error reply ``exc`` (to ``CONFIG GET``) and its fix."""
    reply = str(exc)
    upper = reply.upper()
    if upper.startswith("DENIED") or "PROTECTED MODE" in upper:
        return ConfigRefused("protected-mode", reply, (
            "Redis is in protected mode and refuses every command from another host "
            f"(it replied: {reply[:120]}). Fix: give Redis a password (requirepass, or an ACL user) and put it "
            "in redis_url (redis://:PASSWORD@host:6379/0) or redis_sentinel.password; or bind it to a private "
            "interface and set protected-mode no"
        ), fatal=True)
    wrong = upper.startswith("WRONGPASS") or "INVALID USERNAME-PASSWORD" in upper or "INVALID PASSWORD" in upper
    # redis-py strips the NOAUTH prefix (an AuthenticationError); on connect Redis 7 answers
    # HELLO with "NOAUTH HELLO must be called with the client already authenticated".
    if not wrong and (upper.startswith("NOAUTH") or "AUTHENTICATION REQUIRED" in upper
                      or isinstance(exc, AuthenticationError)):
        return ConfigRefused("noauth", reply, (
            "Redis requires a password and none was given (NOAUTH). Fix: put it in redis_url "
            "(redis://:PASSWORD@host:6379/0, or redis://USER:PASSWORD@host for an ACL user) or in "
            "redis_sentinel.password"
        ), fatal=True)
    if wrong:
        return ConfigRefused("wrongpass", reply, (
            "Redis refused the user name or password given (WRONGPASS). Fix: check the password (and the "
            "ACL user name, if any) in redis_url or redis_sentinel.username / password against the server's "
            "requirepass or ACL"
        ), fatal=True)
    if upper.startswith("NOPERM") or "NO PERMISSIONS" in upper:
        return ConfigRefused("noperm", reply, (
            "CONFIG GET is not allowed for this Redis user (NOPERM: its ACL leaves CONFIG out, as managed "
            "services do)"
        ))
    return ConfigRefused("disabled", reply, (
        f"CONFIG GET is not allowed on this Redis (a managed service? it replied: {reply[:120]})"
    ))


@dataclass(frozen=True, slots=True)
class RedisVerdict:
    """What the check concluded. ``settings`` is None when they could not be read."""

    settings: RedisSettings | None
    refusals: tuple[str, ...]
    warnings: tuple[str, ...]
    #: What the gateway itself waits for on each acknowledged write (``durable_replicas``).
    durability: Durability = NO_WAIT
    #: Why ``settings`` is None, when Redis said why.
    config_refused: ConfigRefused | None = None
    #: Warnings about availability, not loss (replicas missing: acknowledgements answer 503).
    notices: tuple[str, ...] = ()

    @property
    def durable_ack(self) -> bool:
        """True when an acknowledged write survives the loss of the primary's memory: it waits
        for replicas, or the primary fsyncs before it replies."""
        if self.durability.replicas > 0:
            return True
        s = self.settings
        return (s is not None and s.appendonly == "yes" and s.appendfsync == "always"
                and s.no_appendfsync_on_rewrite == "no")


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What ``INFO`` says (INFO is allowed where CONFIG is not)."""

    version: tuple[int, ...] = (0,)
    maxmemory_policy: str | None = None
    connected_replicas: int = 0
    role: str = "master"


async def read_settings(redis: aioredis.Redis) -> RedisSettings | None:
    """CONFIG GET the settings; None when CONFIG is disabled or not permitted.

    Raises:
        RedisError: Redis could not be reached.
    """
    try:
        return await _config_get(redis)
    except ResponseError:
        # "unknown command" (renamed away) or NOPERM (ACL): a managed Redis.
        return None


async def _config_get(redis: aioredis.Redis) -> RedisSettings:
    found: dict[str, str] = {}
    for name in ("appendonly", "appendfsync", "save", "maxmemory-policy", "no-appendfsync-on-rewrite"):
        reply = await redis.config_get(name)
        found.update({_text(k): _text(v) for k, v in reply.items()})
    return RedisSettings(
        appendonly=found.get("appendonly", "no"),
        appendfsync=found.get("appendfsync", "everysec"),
        save=found.get("save", ""),
        maxmemory_policy=found.get("maxmemory-policy", "noeviction"),
        no_appendfsync_on_rewrite=found.get("no-appendfsync-on-rewrite", "no"),
    )


async def read_facts(redis: aioredis.Redis) -> ServerFacts:
    """INFO server, memory and replication; empty facts when INFO is refused too."""
    try:
        info = await redis.info("everything")
    except ResponseError:
        return ServerFacts()
    version = tuple(int(part) for part in str(info.get("redis_version", "0")).split(".") if part.isdigit())
    policy = info.get("maxmemory_policy")
    return ServerFacts(
        version=version or (0,),
        maxmemory_policy=str(policy) if policy is not None else None,
        connected_replicas=int(info.get("connected_slaves", 0)),
        role=str(info.get("role", "master")),
    )


def assess(
    settings: RedisSettings | None,
    *,
    require_durable: bool,
    durability: Durability = NO_WAIT,
    facts: ServerFacts | None = None,
    refused: ConfigRefused | None = None,
) -> RedisVerdict:
    """Judge ``settings``: an evicting policy is refused; a Redis that can lose acknowledged
    messages is a warning, or a refusal when ``require_durable``. With ``durability`` waiting
    for replicas, the primary's own disk settings no longer decide (and are not warned about)."""
    refusals: list[str] = []
    doubts: list[str] = []
    replicated = durability.replicas > 0
    policy = settings.maxmemory_policy if settings is not None else (facts.maxmemory_policy if facts else None)
    if policy is not None and policy != "noeviction":
        refusals.append(
            f"Redis maxmemory-policy is {policy!r}: under memory pressure it deletes keys, "
            "losing queued messages, turn ledgers, leases and duplicate claims. Fix: set maxmemory-policy "
            "noeviction (CONFIG SET maxmemory-policy noeviction and in redis.conf, or the provider's setting)"
        )
    if durability.on_disk and facts is not None and facts.version < (7, 2):
        refusals.append(
            f"durable_on_disk needs WAITAOF, which Redis {'.'.join(map(str, facts.version))} does not have (7.2 or "
            "later). Fix: upgrade Redis, or set durable_on_disk: false and rely on durable_replicas (WAIT)"
        )
    # Not turned into a refusal by require_durable: nothing acknowledged is at risk, only
    # availability (a replica resyncing after a failover must not stop the workers starting).
    notes: list[str] = []
    if replicated and facts is not None and facts.connected_replicas < durability.replicas:
        notes.append(
            f"durable_replicas is {durability.replicas} but the primary has {facts.connected_replicas} replica(s) "
            "connected: every acknowledgement waits for them and answers 503 until they are"
        )
    if settings is None:
        why = refused.explanation if refused is not None else (
            "CONFIG GET is not allowed on this Redis (a managed service?)"
        )
        eviction = (
            f"it never evicts keys (INFO says maxmemory-policy {policy})" if policy is not None
            else "it never evicts keys (maxmemory-policy noeviction: check it in the provider's settings)"
        )
        if replicated:
            # Not a doubt: the replicas carry the guarantee; said once, so the operator knows why.
            log.info(
                "%s; acknowledgements rely on durable_replicas: %d (each waits for WAIT to confirm that many "
                "replicas hold it), not on this server's disk settings, which cannot be read; %s",
                why, durability.replicas, eviction,
            )
        else:
            doubts.append(
                f"{why}, so the gateway cannot verify that it persists acknowledged messages (appendonly yes, "
                f"appendfsync always) or that {eviction}; check those in the provider's settings, or set "
                "durable_replicas so that acknowledgements wait for replicas (WAIT)"
            )
    elif not replicated:
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
    return RedisVerdict(settings, tuple(refusals), tuple(doubts), durability, refused, tuple(notes))


async def check_redis(redis: aioredis.Redis, *, require_durable: bool, durability: Durability = NO_WAIT) -> RedisVerdict:
    """Read and judge the Redis behind ``redis``; log every warning loudly. Call it at start-up
    of the web and worker processes.

    Raises:
        UnsafeRedis: an evicting policy, a password or protected-mode refusal, ``durable_on_disk``
            on a Redis without ``WAITAOF``, or (with ``require_durable``) a Redis that can lose
            acknowledged messages or cannot be checked.
    """
    refused: ConfigRefused | None = None
    try:
        try:
            settings: RedisSettings | None = await _config_get(redis)
        except (ResponseError, AuthenticationError) as exc:
            refused, settings = explain_refusal(exc), None
            if refused.fatal:
                raise UnsafeRedis(f"refusing to start: {refused.explanation}") from exc
        facts = await read_facts(redis)
    except UnsafeRedis:
        raise
    except (RedisError, OSError) as exc:
        if require_durable:
            raise UnsafeRedis(f"cannot check Redis at start-up ({exc}) and require_durable_redis is true") from exc
        log.warning("could not check Redis at start-up (%s); the check runs again at the next start", exc)
        return RedisVerdict(None, (), (), durability)
    verdict = assess(settings, require_durable=require_durable, durability=durability, facts=facts, refused=refused)
    for warning in verdict.warnings:
        log.warning("ACKNOWLEDGED MESSAGES CAN BE LOST: %s", warning)
    for notice in verdict.notices:
        log.warning("Redis: %s", notice)
    if verdict.refusals:
        raise UnsafeRedis("refusing to start: " + "; ".join(verdict.refusals))
    return verdict


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
