"""The operational endpoints, the same on the web process and on a worker's own listener:

* ``GET /livez`` — 200 while the process serves HTTP; no Redis call (a restart would not help a
  Redis outage, so liveness must not depend on it).
* ``GET /readyz`` — 200 when the process can do its work (Redis answers PING, the configuration
  is loaded; on the web process Redis also takes writes, and on a worker its housekeeping runs);
  else 503 with a JSON reason that names no host or port (those go to the log).
* ``GET /metrics`` — the Prometheus exposition, the Redis-backed gauges refreshed first; when
  Redis does not answer, what the process has is still served.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.core.config import GatewayConfig
from gateway.core.keys import Keys
from gateway.core.metrics import Metrics
from gateway.observe.gauges import GaugeRefresher

__all__ = [
    "Opened", "Probe", "ServicesProbe", "WriteCheck", "health_routes", "metrics_token_refusal", "ping", "refreshed",
]

log = logging.getLogger("ocsgw.health")

#: A readiness or gauge read that takes longer than this counts as Redis not answering
#: (Prometheus's scrape timeout is 10 s by default; a probe must answer well within it).
REDIS_TIMEOUT_S = 3.0
#: How long a write probe's verdict stands: readiness is polled every few seconds by each load
#: balancer, and a probe per poll would be a write per poll.
WRITE_CHECK_EVERY_S = 5.0


class Probe(Protocol):
    """What the endpoints ask of a process."""

    async def problem(self) -> str | None:
        """None when ready, else a short reason for the 503 (no host, no port)."""
        ...

    async def exposition(self) -> tuple[bytes, str]:
        """The metrics, Redis-backed gauges refreshed when possible, and their content type."""
        ...


class Opened(Protocol):
    """The opened services the endpoints read (``gateway.services.Services`` fits)."""

    @property
    def config(self) -> GatewayConfig: ...
    @property
    def redis(self) -> aioredis.Redis: ...
    @property
    def keys(self) -> Keys: ...
    @property
    def metrics(self) -> Metrics: ...


async def ping(redis: aioredis.Redis) -> str | None:
    """None when Redis answers PING in time, else the reason for a 503."""
    try:
        await asyncio.wait_for(redis.ping(), REDIS_TIMEOUT_S)
    except (RedisError, OSError, TimeoutError) as exc:
        # The exception names Redis's host and port: for the log, not for whoever asks.
        log.warning("readiness: Redis unreachable: %s", exc or type(exc).__name__)
        return "redis unreachable"
    return None


class WriteCheck:
    """Whether Redis takes writes, asked at most once every ``every_s`` (the verdict is cached).

    A full Redis under ``noeviction`` (which the gateway requires), one that failed a background
    save (MISCONF) and a read-only replica after a failover all still answer PING while every
    webhook gets 503; a small ``SET`` that expires by itself fails in all three. One object per
    app: the probe that uses it is built per request."""

    def __init__(self, *, every_s: float = WRITE_CHECK_EVERY_S) -> None:
        self.every_s = every_s
        self._checked_at = -float("inf")
        self._verdict: str | None = None

    async def problem(self, redis: aioredis.Redis, keys: Keys) -> str | None:
        """None when Redis took the probe's write (now or within ``every_s``), else the reason."""
        now = time.monotonic()
        if now - self._checked_at < self.every_s:
            return self._verdict
        self._checked_at = now  # concurrent probes reuse the verdict in hand rather than all write
        key = f"{keys.namespace}:ready:{os.getpid()}"
        try:
            await asyncio.wait_for(redis.set(key, 1, px=int(max(self.every_s, 1.0) * 2000)), REDIS_TIMEOUT_S)
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
            log.warning("readiness: Redis unreachable: %s", exc or type(exc).__name__)
            self._verdict = "redis unreachable"
        except RedisError as exc:
            # OOM, MISCONF, READONLY: Redis's own words name no host, but they go to the log only.
            log.warning("readiness: Redis refuses writes: %s", exc or type(exc).__name__)
            self._verdict = "redis refuses writes"
        else:
            self._verdict = None
        return self._verdict


async def refreshed(services: Opened, gauges: GaugeRefresher) -> tuple[bytes, str]:
    """``services.metrics`` rendered after ``gauges`` (the process's refresher of those metrics)
    refreshed the Redis-backed gauges, or with their last values when Redis does not answer
    (counted in ``ocsgw_gauges_refresh_errors_total``)."""
    try:
        await asyncio.wait_for(
            gauges.refresh(services.redis, services.keys, services.config), REDIS_TIMEOUT_S
        )
    except (RedisError, OSError, TimeoutError) as exc:
        services.metrics.gauges_refresh_errors.inc()
        log.warning("metrics: Redis-backed gauges not refreshed: %s", exc or type(exc).__name__)
    return services.metrics.render()


class ServicesProbe:
    """The web process's probe: its opened services (None until the app's lifespan ran) and,
    when given, the app's ``WriteCheck`` (the web process must store what it acknowledges)."""

    def __init__(
        self, services: Opened | None, writes: WriteCheck | None = None, gauges: GaugeRefresher | None = None
    ) -> None:
        self.services = services
        self.writes = writes
        self.gauges = gauges

    async def problem(self) -> str | None:
        if self.services is None:
            return "configuration not loaded"
        unreachable = await ping(self.services.redis)
        if unreachable is not None or self.writes is None:
            return unreachable
        return await self.writes.problem(self.services.redis, self.services.keys)

    async def exposition(self) -> tuple[bytes, str]:
        if self.services is None:
            return Metrics().render()  # before start-up: valid, and empty
        gauges = self.gauges if self.gauges is not None else GaugeRefresher(self.services.metrics)
        return await refreshed(self.services, gauges)


def health_routes(probe_of: Callable[[Request], Probe], *, metrics_token: str | None = None) -> list[Route]:
    """``/livez``, ``/readyz`` (and ``/healthz``, its older name) and ``/metrics``; with
    ``metrics_token``, ``/metrics`` answers only ``Authorization: Bearer <token>`` (401 otherwise).
    The probes stay open: an orchestrator asks them without credentials, and they say nothing."""

    async def livez(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        reason = await probe_of(request).problem()
        if reason is not None:
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        if (refused := metrics_token_refusal(request, metrics_token)) is not None:
            return refused
        body, content_type = await probe_of(request).exposition()
        return Response(body, media_type=content_type)

    handlers: list[tuple[str, Callable[[Request], Awaitable[Response]]]] = [
        ("/livez", livez), ("/readyz", readyz), ("/healthz", readyz), ("/metrics", metrics),
    ]
    return [Route(path, handler, methods=["GET"]) for path, handler in handlers]


def metrics_token_refusal(request: Request, metrics_token: str | None) -> Response | None:
    """None when ``request`` may read what ``metrics_token`` guards (no token is configured, or
    it offers ``Authorization: Bearer <token>``); else the 401 to answer, which names nothing of
    the gateway. Every route that shows channel or bot names asks this one check."""
    if metrics_token is None or _bearer_is(request, metrics_token):
        return None
    return JSONResponse(
        {"service": "ocs-gateway", "error": "this needs Authorization: Bearer <metrics_token>"},
        status_code=401, headers={"WWW-Authenticate": "Bearer"},
    )


def _bearer_is(request: Request, token: str) -> bool:
    scheme, _, offered = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(offered.strip().encode(), token.encode())
