"""The HTTP edge. For every platform request it does four things, then answers: verify, parse,
claim and store, enqueue — the last two in one Redis round trip
(``gateway/store/inbox.py``). It never waits for the bot, never makes a synchronous Redis call on its
event loop, and never answers 200 for a message that is not stored."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from gateway.core.channel import InboundRequest
from gateway.core.config import GatewayConfig
from gateway.core.errors import (
    InboundError,
    RetryLater,
    StoreUnavailable,
    UnknownChannel,
)
from gateway.core.logs import bound
from gateway.core.metrics import Metrics
from gateway.core.queue import ADVANCE, NAMESPACE, QUEUE
from gateway.edge.admin import create_admin_app
from gateway.edge.framing import AmbiguousFraming
from gateway.edge.inbound_metrics import (
    CLIENT_CLOSED_REQUEST,
    InboundMetrics,
    admit_with_ids,
    counted_admit,
    note_outcome,
)
from gateway.edge.limits import BodySizeLimit
from gateway.observe.gauges import GaugeRefresher
from gateway.observe.health import (
    ServicesProbe,
    WriteCheck,
    health_routes,
    metrics_token_refusal,
)
from gateway.services import Services
from gateway.store.inbox import Admitter, WakeQueue
from gateway.store.traffic import TrafficRecorder

__all__ = ["create_app"]

log = logging.getLogger("ocsgw.edge")


def create_app(
    config: GatewayConfig,
    redis_url: str,
    *,
    extra_routes: list[BaseRoute] | None = None,
) -> Starlette:
    """The gateway's ASGI app. ``extra_routes`` lets the quickstart mount the simulator."""
    # Built before the services: the counting middleware exists before the lifespan runs.
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Refuses an evicting Redis (and a non-durable one if so configured) before any 200.
        services = await Services.open_checked(config, redis_url, metrics=metrics)
        wake = WakeQueue.new(namespace=NAMESPACE, queue=QUEUE, actor=ADVANCE)
        app.state.services = services
        app.state.admitter = Admitter(
            services.redis, services.keys, dedup_ttl_s=config.worker.dedup_ttl_s, wake=wake,
            durability=services.durability,
        )
        # Per-channel request counts for /admin and `ocs-gateway status`, flushed every few seconds.
        app.state.traffic = TrafficRecorder(services.redis, services.keys, config.channels)
        # Adapter routes (Slack's OAuth install) need the services, which exist only now.
        for adapter in services.adapters.values():
            app.router.routes.extend(adapter.routes())
        # Channels that receive over a connection of their own (Socket Mode, long polling)
        # store through the same admitter as the HTTP routes.
        stop = asyncio.Event()
        listeners = []
        for name, adapter in services.adapters.items():
            admit = counted_admit(
                app.state.admitter, metrics, app.state.traffic, channel=name, kind=adapter.kind,
                reveal=config.log_message_text,
            )
            # The task copies this context: every line of the listener, the SDK's included, names its channel.
            with bound(channel=name, kind=adapter.kind):
                listeners.append(asyncio.create_task(adapter.listen(admit, stop), name=f"listen:{name}"))
        listeners.append(asyncio.create_task(app.state.traffic.run(stop), name="traffic"))
        try:
            yield
        finally:
            stop.set()
            await _stop_listeners(listeners)
            await services.aclose()

    writes = WriteCheck()  # one per app: its verdict is cached across requests
    gauges = GaugeRefresher(metrics)  # one per app (process): scrapes share its cached refresh
    metrics_token = config.metrics_token.reveal() if config.metrics_token is not None else None
    routes: list[BaseRoute] = [
        Route("/", _banner(metrics_token), methods=["GET"]),
        *health_routes(
            lambda request: ServicesProbe(getattr(request.app.state, "services", None), writes, gauges),
            metrics_token=metrics_token,
        ),
    ]
    for kind, path in Services.inbound_paths(config).items():
        routes.append(Route(path, _ingest(kind), methods=["POST"]))
    routes += extra_routes or []
    app = Starlette(
        routes=routes,
        middleware=[
            # Outermost, so everything below (the console's failure throttle, its Secure cookie)
            # sees the client and scheme a trusted proxy names. Applied here rather than by the
            # server: one trust list, `forwarded_allow_ips`, however the app is served.
            Middleware(ProxyHeadersMiddleware, trusted_hosts=list(config.forwarded_allow_ips)),
            Middleware(
                InboundMetrics, paths=Services.inbound_paths(config), metrics=metrics,
                channels={name: channel.type for name, channel in config.channels.items()},
            ),
            # Before anything reads a body: a request framed by two headers is refused unread.
            Middleware(AmbiguousFraming),
            Middleware(BodySizeLimit, max_body_bytes=config.max_body_bytes),
        ],
        exception_handlers=_ERROR_STATUSES,
        lifespan=lifespan,
    )
    if config.admin_token is not None:
        # The console reads the services the lifespan opens, hence the late lookup.
        app.router.routes.append(Mount("/admin", create_admin_app(config, lambda: app.state.services)))
    return app


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
        reveal = services.config.log_message_text
        with bound(channel=channel, kind=kind):
            await adapter.verify(inbound_request)
            parsed = await adapter.parse(inbound_request)
            admitter: Admitter = request.app.state.admitter
            stored = duplicates = 0
            for inbound in parsed.inbounds:
                # Stored, listed as active and queued in one script: no half-done admission to repair.
                if await admit_with_ids(admitter, inbound, reveal=reveal):
                    stored += 1
                else:
                    duplicates += 1
        note_outcome(request.scope, "accepted" if stored else "duplicate" if duplicates else "ignored")
        return JSONResponse(parsed.response if parsed.response is not None else {"ok": True})

    return ingest


def _banner(metrics_token: str | None) -> Callable[[Request], Awaitable[Response]]:
    """The channels, their paths and bot usernames: the names ``/metrics`` carries, so they are
    guarded by the same token (open when it is unset, as ``/metrics`` is)."""

    async def banner(request: Request) -> Response:
        if (refused := metrics_token_refusal(request, metrics_token)) is not None:
            return refused
        services: Services = request.app.state.services
        return JSONResponse(
            {"service": "ocs-gateway", "channels": {name: dict(a.describe()) for name, a in services.adapters.items()}}
        )

    return banner


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


async def _client_disconnected(request: Request, exc: ClientDisconnect) -> Response:
    """The client hung up before its body arrived: nothing to answer, nothing of ours failed.
    The status only tells the counting middleware what happened (the server drops the reply)."""
    log.info("client disconnected before the request body arrived")
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def _retry_response(message: str, retry_after_s: float) -> Response:
    # Telegram honours Retry-After on our errors; Slack and webhook senders retry on any 5xx.
    headers = {"Retry-After": str(max(int(retry_after_s), 1))}
    return JSONResponse({"error": message}, status_code=503, headers=headers)


#: One table from our errors to HTTP answers, so every route answers a failure alike; never a 200
#: for what failed (the platform would not retry, and the message would be lost).
_ERROR_STATUSES: dict[Any, Any] = {
    InboundError: _inbound_error,
    StoreUnavailable: _store_unavailable,
    RetryLater: _platform_unavailable,
    ClientDisconnect: _client_disconnected,
}
