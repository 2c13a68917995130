"""Slack Socket Mode: the channel's events arrive over a WebSocket the gateway opens itself, so
the gateway needs no public URL (docs/SLACK.md, "Socket Mode").

Each envelope goes through the same parser as an Events API request (its ``events_api`` payload
is exactly the HTTP body; a slash command's payload is the form as a dict), every inbound is
stored with ``admit``, and **only then** is the envelope acknowledged. When Redis does not take
it, the envelope stays unacknowledged and Slack redelivers it (``retry_attempt`` + 1), where the
same event-id dedup as over HTTP makes it one turn. Several gateway replicas may hold a
connection each: Slack spreads envelopes over an app's connections, and a redelivery that lands
on another replica meets the dedup.

The connection is slack_sdk's aiohttp ``SocketModeClient``: it opens the URL from
``apps.connections.open`` with the app-level token, pings, notices stale and closed sessions, and
reconnects on ``disconnect`` messages. We register a request listener and send the ack
ourselves, which is what our promise needs; Bolt's ``AsyncSocketModeHandler`` would ack from
inside Bolt's dispatch and run its own authorization and self-event middleware next to our
parser. The subclass adds exponential backoff to the reconnects (slack_sdk retries at a fixed
interval), so an outage of Slack or a revoked token is not hammered. (One gap is slack_sdk's:
when the WebSocket connect itself fails, its ``connect`` retries the same URL every
``ping_interval_s`` instead of asking ``apps.connections.open`` for a new one.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp
from redis.exceptions import RedisError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from gateway.core.channel import Admit, InboundRequest
from gateway.core.errors import PayloadInvalid, RetryLater, StoreUnavailable
from gateway.core.models import ParsedRequest

__all__ = ["SocketModeListener"]

log = logging.getLogger(__name__)

Parse = Callable[[InboundRequest], Awaitable[ParsedRequest]]

#: What makes an envelope worth a redelivery: the store or the platform is down for now.
_TRANSIENT = (StoreUnavailable, RetryLater, RedisError, OSError, TimeoutError)


class _BackoffSocketModeClient(SocketModeClient):
    """slack_sdk's client, waiting longer before each consecutive failed ``apps.connections.open``
    (every reconnect asks for a new URL first), from ``base_s`` doubling up to ``max_s``."""

    def __init__(self, *args: Any, backoff_base_s: float, backoff_max_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._failures = 0

    async def issue_new_wss_url(self) -> str:
        if self._failures:
            delay = min(self._backoff_max_s, self._backoff_base_s * 2 ** (self._failures - 1))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter: replicas do not reconnect in step
        try:
            url = await super().issue_new_wss_url()
        except Exception:
            self._failures += 1
            raise
        self._failures = 0
        return url


class SocketModeListener:
    """Receives one Slack channel's envelopes until ``stop`` is set.

    Parameters:
        name: the channel's name (for logs and ``InboundRequest.channel``).
        app_token: the app-level ``xapp-`` token.
        api_base_url: where ``apps.connections.open`` is called (the channel's ``api_base_url``).
        parse: the channel's parser, the one the HTTP edge uses.
        session: the process's shared aiohttp session (``AdapterServices.aiohttp_session``) for
            ``apps.connections.open``; None: slack_sdk opens one per call.
        ping_interval_s: slack_sdk's ping and stale-session check interval.
        backoff_base_s / backoff_max_s: the wait before reconnecting after failed attempts.
    """

    def __init__(
        self,
        *,
        name: str,
        app_token: str,
        api_base_url: str,
        parse: Parse,
        session: aiohttp.ClientSession | None = None,
        ping_interval_s: float = 5.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        drain_s: float = 5.0,
    ) -> None:
        self._name = name
        self._app_token = app_token
        self._api_base_url = api_base_url.rstrip("/") + "/"
        self._parse = parse
        self._session = session
        self._ping_interval_s = ping_interval_s
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._drain_s = drain_s
        self._in_hand: set[asyncio.Task[Any]] = set()

    async def run(self, admit: Admit, stop: asyncio.Event) -> None:
        """Connect, store and acknowledge envelopes, reconnect as needed; return once ``stop``
        is set and the envelopes in hand are stored and acknowledged (or ``drain_s`` passed)."""
        # Only the Web API calls can share the process's session: the WebSocket runs on a session
        # slack_sdk's client creates in its constructor and closes in close() (it takes none), and
        # the shared one's whole-call timeout would cut a long-lived socket anyway.
        client = _BackoffSocketModeClient(
            app_token=self._app_token,
            web_client=AsyncWebClient(base_url=self._api_base_url, session=self._session),
            logger=logging.getLogger(f"{__name__}.sdk"),
            ping_interval=self._ping_interval_s,
            backoff_base_s=self._backoff_base_s,
            backoff_max_s=self._backoff_max_s,
        )

        async def on_request(sdk_client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._in_hand.add(task)
            try:
                await self._handle(sdk_client, request, admit)
            finally:
                if task is not None:
                    self._in_hand.discard(task)

        client.socket_mode_request_listeners.append(on_request)
        # connect() retries by itself until it is connected or the client is closed.
        connect = client.connect()  # type: ignore[no-untyped-call]  # slack_sdk leaves it unannotated
        connecting = asyncio.create_task(connect, name=f"slack-socket-connect:{self._name}")
        log.info("slack channel %s: Socket Mode listener started", self._name)
        try:
            await stop.wait()
        finally:
            if self._in_hand:
                await asyncio.wait(set(self._in_hand), timeout=self._drain_s)
            connecting.cancel()
            await client.close()  # type: ignore[no-untyped-call]  # slack_sdk leaves it unannotated
            await asyncio.gather(connecting, return_exceptions=True)
            log.info("slack channel %s: Socket Mode listener stopped", self._name)

    async def _handle(self, client: AsyncBaseSocketModeClient, request: SocketModeRequest, admit: Admit) -> None:
        """Store what the envelope carries, then acknowledge it; leave it unacknowledged when the
        store (or Slack, for the bot's identity) is down, so that Slack redelivers it."""
        envelope, kind, attempt = request.envelope_id, request.type, request.retry_attempt or 0
        try:
            response = await self._store(request, admit)
        except _TRANSIENT as exc:
            log.warning(
                "slack channel %s: %s envelope %s (attempt %s) not stored, left for Slack to redeliver: %s",
                self._name, kind, envelope, attempt, type(exc).__name__,
            )  # fmt: skip
            return
        except PayloadInvalid as exc:
            # Redelivering what cannot be read cannot help: acknowledge and say so.
            log.warning("slack channel %s: %s envelope %s refused: %s", self._name, kind, envelope, exc)
            response = None
        except Exception:
            log.exception("slack channel %s: %s envelope %s failed; not acknowledged", self._name, kind, envelope)
            return
        payload = dict(response) if response is not None and request.accepts_response_payload else None
        try:
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=envelope, payload=payload))
        except (ConnectionError, OSError, RuntimeError) as exc:
            # Stored already: the redelivery this causes meets the dedup.
            log.warning("slack channel %s: ack of envelope %s failed: %s", self._name, envelope, type(exc).__name__)

    async def _store(self, request: SocketModeRequest, admit: Admit) -> Mapping[str, Any] | None:
        """Parse the envelope's payload as the HTTP edge parses a request and admit each inbound;
        returns the slash command's response (shown to the user), if any.

        Raises:
            StoreUnavailable: Redis did not take an inbound.
            PayloadInvalid: the payload is not what Slack documents.
        """
        received_at = time.time()
        if request.type == "events_api":
            # The events_api payload is the Events API body itself.
            body, content_type = json.dumps(request.payload).encode(), "application/json"
        elif request.type == "slash_commands":
            # Over HTTP a slash command is a form; over the socket the same fields as a dict.
            fields = {k: _form_value(v) for k, v in request.payload.items() if v is not None}
            body, content_type = urlencode(fields).encode(), "application/x-www-form-urlencoded"
        else:
            return None  # interactive payloads and the like: the bot has no buttons
        inbound_request = InboundRequest(
            channel=self._name, headers={"content-type": content_type}, body=body, received_at=received_at
        )
        parsed = await self._parse(inbound_request)
        for inbound in parsed.inbounds:
            if not await admit(inbound):
                log.info("slack channel %s: duplicate event %s", self._name, inbound.event_id)
        response = parsed.response
        return response if isinstance(response, Mapping) else None  # a Slack response is an object


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)
