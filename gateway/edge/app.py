"""The HTTP edge. For every platform request it does four things, then answers: verify, parse,
claim and store, enqueue (STYLE.md §7) — the last two in one Redis round trip
(``gateway/store/inbox.py``). It never waits for the bot, never makes a synchronous Redis call on its
event loop, and never answers 200 for a message that is not stored."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.core.channel import InboundRequest
from gateway.core.config import GatewayConfig
from gateway.core.errors import (
    InboundError,
    RetryLater,
    StoreUnavailable,
    UnknownChannel,
)
from gateway.core.queue import ADVANCE, NAMESPACE, QUEUE
from gateway.edge.limits import BodySizeLimit
from gateway.services import Services
from gateway.store.inbox import Admitter, WakeQueue

__all__ = ["create_app"]

log = logging.getLogger("ocsgw.edge")


def create_app(
    config: GatewayConfig,
    redis_url: str,
    *,
    extra_routes: list[BaseRoute] | None = None,
) -> Starlette:
    """The gateway's ASGI app. ``extra_routes`` lets the quickstart mount the simulator."""
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Refuses an evicting Redis (and a non-durable one if so configured) before any 200.
        services = await Services.open_checked(config, redis_url)
        wake = WakeQueue.new(namespace=NAMESPACE, queue=QUEUE, actor=ADVANCE)
        app.state.services = services
        app.state.admitter = Admitter(
            services.redis, services.keys, dedup_ttl_s=config.worker.dedup_ttl_s, wake=wake
        )
        # Adapter routes (Slack's OAuth install) need the services, which exist only now.
        for adapter in services.adapters.values():
            app.router.routes.extend(adapter.routes())
        # Channels that receive over a connection of their own (Socket Mode, long polling)
        # store through the same admitter as the HTTP routes.
        stop = asyncio.Event()
        listeners = [
            asyncio.create_task(adapter.listen(app.state.admitter, stop), name=f"listen:{name}")
            for name, adapter in services.adapters.items()
        ]
        try:
            yield
        finally:
            stop.set()
            await _stop_listeners(listeners)
            await services.aclose()

    routes: list[BaseRoute] = [
        Route("/", _banner(config), methods=["GET"]),
        Route("/healthz", _health, methods=["GET"]),
    ]
    for kind, path in Services.inbound_paths(config).items():
        routes.append(Route(path, _ingest(kind), methods=["POST"]))
    routes += extra_routes or []
    return Starlette(
        routes=routes,
        middleware=[Middleware(BodySizeLimit, max_body_bytes=config.max_body_bytes)],
        exception_handlers=_ERROR_STATUSES,
        lifespan=lifespan,
    )


async def _stop_listeners(listeners: list[asyncio.Task[None]], grace_s: float = 10.0) -> None:
    """Let listeners finish the event in hand (stored and acknowledged), then cancel stragglers."""
    if not listeners:
        return
    _, pending = await asyncio.wait(listeners, timeout=grace_s)
    for task in pending:
        task.cancel()
    for outcome, task in zip(await asyncio.gather(*listeners, return_exceptions=True), listeners):
        if isinstance(outcome, Exception):
            log.error("listener %s ended with an error", task.get_name(), exc_info=outcome)


def _ingest(kind: str) -> Callable[[Request], Awaitable[Response]]:
    async def ingest(request: Request) -> Response:
        services: Services = request.app.state.services
        channel = request.path_params["channel"]
        adapter = services.adapters.get(channel)
        if adapter is None or adapter.kind != kind:
            raise UnknownChannel(f"no {kind} channel named {channel!r}")
        inbound_request = InboundRequest(
            channel=channel,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.body(),
            query=dict(request.query_params),
            received_at=time.time(),
        )
        await adapter.verify(inbound_request)
        parsed = await adapter.parse(inbound_request)
        admitter: Admitter = request.app.state.admitter
        for inbound in parsed.inbounds:
            # Stored, listed as active and queued in one script: no half-done admission to repair.
            if not await admitter(inbound):
                log.info("duplicate event channel=%s event=%s", channel, inbound.event_id)
        return JSONResponse(parsed.response if parsed.response is not None else {"ok": True})

    return ingest


def _banner(config: GatewayConfig) -> Callable[[Request], Awaitable[Response]]:
    async def banner(request: Request) -> Response:
        services: Services = request.app.state.services
        return JSONResponse(
            {"service": "ocs-gateway", "channels": {name: dict(a.describe()) for name, a in services.adapters.items()}}
        )

    return banner


async def _health(request: Request) -> Response:
    services: Services = request.app.state.services
    try:
        await services.redis.ping()
    except (RedisError, OSError) as exc:
        # The reason names Redis's host and port: for the log, not for whoever asks.
        log.warning("health check: Redis unreachable: %s", exc)
        return JSONResponse({"status": "unavailable", "redis": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def _inbound_error(request: Request, exc: InboundError) -> Response:
    return JSONResponse({"error": str(exc) or type(exc).__name__}, status_code=exc.status)


async def _store_unavailable(request: Request, exc: StoreUnavailable) -> Response:
    log.error("refusing inbound: %s", exc)
    return _retry_response("temporarily unable to store the message; retry", 5)


async def _platform_unavailable(request: Request, exc: RetryLater) -> Response:
    """An adapter needed the platform to read the request (Telegram's getMe for group gating)
    and it is down: ask for a retry rather than answer 500."""
    log.warning("platform unavailable while parsing: %s", exc)
    return _retry_response("platform temporarily unavailable; retry", exc.retry_after_s)


def _retry_response(message: str, retry_after_s: float) -> Response:
    # Telegram honours Retry-After on our errors; Slack and webhook senders retry on any 5xx.
    headers = {"Retry-After": str(max(int(retry_after_s), 1))}
    return JSONResponse({"error": message}, status_code=503, headers=headers)


#: One table from our errors to HTTP answers (STYLE.md §7); never a 200 for what failed.
_ERROR_STATUSES: dict[Any, Any] = {
    InboundError: _inbound_error,
    StoreUnavailable: _store_unavailable,
    RetryLater: _platform_unavailable,
}
