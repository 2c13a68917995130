"""A local fake of Slack's Socket Mode WebSocket server (aiohttp on 127.0.0.1, in a thread).

What it speaks, as Slack does (docs: "Socket Mode implementation", api.slack.com/apis/connections/
socket-implement; slack_sdk ``socket_mode/request.py`` and ``response.py`` for the field names):

- ``apps.connections.open`` (served by ``FakeSlack``, which asks ``open_url``) gives a one-use
  ``ws://127.0.0.1:<port>/link/?ticket=...`` URL for the app-level token (``xapp-``);
- on connect the server sends ``{"type": "hello", "num_connections", "debug_info",
  "connection_info": {"app_id"}}``;
- an event goes out as an envelope ``{"envelope_id", "type": "events_api" | "slash_commands" |
  "interactive", "payload", "accepts_response_payload", "retry_attempt", "retry_reason"}`` to one
  connection (round robin over the app's connections, as Slack spreads them);
- the app acknowledges with ``{"envelope_id": ..., "payload"?: ...}``; an envelope not
  acknowledged within ``redeliver_after_s`` is sent again as a new envelope with
  ``retry_attempt`` + 1 and ``retry_reason: "timeout"`` (the Events API's retry model, Bolt maps
  these to ``X-Slack-Retry-Num``/``-Reason``), up to ``max_retries`` times; an ack of any of its
  envelopes (on any connection of the app) settles the delivery;
- ``disconnect(reason)`` sends ``{"type": "disconnect", "reason": "refresh_requested" |
  "warning" | "link_disabled", "debug_info"}`` and closes that connection after
  ``close_after_disconnect_s`` unless the app closed it first; ``drop()`` closes connections
  without a word.

Use it beside ``FakeSlack``: ``FakeSlack.socket_mode = fake`` makes ``apps.connections.open``
work. The event payloads are the HTTP bodies (``event_envelope`` in ``slack_api.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Self

import pytest
from aiohttp import WSMsgType, web

from tests.support.servers import free_port

__all__ = ["Attempt", "Delivery", "SlackSocketFake", "slack_socket"]

APP_TOKEN = "xapp-1-AFAKEAPP-1-fakeappleveltoken"


@dataclass(frozen=True)
class Attempt:
    """One envelope sent: which delivery try it was and on which connection."""

    envelope_id: str
    retry_attempt: int
    connection: int


@dataclass
class Delivery:
    """One payload Slack wants the app to have, across its attempts."""

    payload: dict[str, Any]
    type: str
    accepts_response_payload: bool
    attempts: list[Attempt] = field(default_factory=list)
    acked: bool = False
    ack_payload: dict[str, Any] | None = None
    gave_up: bool = False


class SlackSocketFake:
    """The Socket Mode server and its knobs; ``with SlackSocketFake() as fake:`` serves it."""

    def __init__(
        self,
        *,
        app_token: str = APP_TOKEN,
        app_id: str = "AFAKEAPP",
        redeliver_after_s: float = 0.5,
        max_retries: int = 3,
        close_after_disconnect_s: float = 2.0,
    ) -> None:
        self.app_token = app_token
        self.app_id = app_id
        self.redeliver_after_s = redeliver_after_s
        self.max_retries = max_retries
        self.close_after_disconnect_s = close_after_disconnect_s
        self.url = ""
        self.stray_acks: list[dict[str, Any]] = []
        self._tickets: set[str] = set()
        self._sockets: dict[int, web.WebSocketResponse] = {}
        self._accepted = 0
        self._conn_ids = itertools.count(1)
        self._round_robin = itertools.count()
        self._deliveries: list[Delivery] = []
        self._by_envelope: dict[str, Delivery] = {}
        self._acked: dict[int, asyncio.Event] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        port = free_port()
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_get("/link/", self._link)
            self._runner = web.AppRunner(app)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True, name="slack-socket-fake")
        self._thread.start()
        if not ready.wait(timeout=15):
            raise RuntimeError("the Socket Mode fake did not start")
        self.url = f"ws://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        try:
            self._call(self._close_all(code=1001))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what FakeSlack's apps.connections.open asks --------------------------------------------

    def open_url(self, token: str | None) -> str | None:
        """A fresh one-use WebSocket URL for the app-level token, or None when it is not ours."""
        if token != self.app_token:
            return None
        ticket = uuid.uuid4().hex
        with self._lock:
            self._tickets.add(ticket)
        return f"{self.url}/link/?ticket={ticket}&app_id={self.app_id}"

    # -- knobs ----------------------------------------------------------------------------------

    def deliver(self, payload: dict[str, Any], *, type: str = "events_api") -> Delivery:
        """Send ``payload`` in an envelope to one connection (waiting for one if none is open),
        redelivering until acknowledged or ``max_retries`` are spent. Returns at once."""
        delivery = Delivery(payload=payload, type=type, accepts_response_payload=type != "events_api")
        with self._lock:
            self._deliveries.append(delivery)
        loop = self._running_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._deliver(delivery)))
        return delivery

    def disconnect(self, reason: str = "refresh_requested", *, connection: int | None = None) -> list[int]:
        """Send ``disconnect`` to one connection (default: every open one); returns their ids."""
        return self._call(self._disconnect(reason, connection))

    def drop(self, *, connection: int | None = None) -> list[int]:
        """Close connections with no ``disconnect`` first (a lost link)."""
        return self._call(self._drop(connection))

    # -- what happened --------------------------------------------------------------------------

    def connections(self) -> list[int]:
        """Ids of the open connections."""
        with self._lock:
            return sorted(self._sockets)

    @property
    def accepted(self) -> int:
        """How many connections were ever accepted (each got a hello)."""
        with self._lock:
            return self._accepted

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    # -- the server -----------------------------------------------------------------------------

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        with self._lock:
            known = ticket in self._tickets
            self._tickets.discard(ticket)  # one use, as apps.connections.open URLs are
        if not known:
            return web.Response(status=403, text="invalid ticket")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        connection = next(self._conn_ids)
        with self._lock:
            self._sockets[connection] = ws
            self._accepted += 1
            count = len(self._sockets)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": count,
                "debug_info": {"host": "applink-fake", "build_number": 1, "approximate_connection_time": 18060},
                "connection_info": {"app_id": self.app_id},
            }
        )
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._on_text(message.data)
        finally:
            with self._lock:
                self._sockets.pop(connection, None)
        return ws

    def _on_text(self, data: str) -> None:
        try:
            ack = json.loads(data)
        except ValueError:
            ack = {"unreadable": data}
        envelope_id = ack.get("envelope_id") if isinstance(ack, dict) else None
        with self._lock:
            delivery = self._by_envelope.get(str(envelope_id))
            if delivery is None or delivery.gave_up:
                self.stray_acks.append(ack if isinstance(ack, dict) else {"ack": ack})
                return
            if not delivery.acked:
                delivery.acked = True
                delivery.ack_payload = ack.get("payload")
            event = self._acked.get(id(delivery))
        if event is not None:
            event.set()

    async def _deliver(self, delivery: Delivery) -> None:
        acked = asyncio.Event()
        with self._lock:
            self._acked[id(delivery)] = acked
        for attempt in range(self.max_retries + 1):
            connection, ws = await self._next_socket()
            envelope_id = uuid.uuid4().hex
            envelope: dict[str, Any] = {
                "envelope_id": envelope_id,
                "type": delivery.type,
                "payload": delivery.payload,
                "accepts_response_payload": delivery.accepts_response_payload,
            }
            if delivery.type == "events_api":
                envelope["retry_attempt"] = attempt
                envelope["retry_reason"] = "timeout" if attempt else ""
            with self._lock:
                self._by_envelope[envelope_id] = delivery
                delivery.attempts.append(Attempt(envelope_id, attempt, connection))
            try:
                await ws.send_json(envelope)
            except (ConnectionError, RuntimeError):
                pass  # the connection went away: it counts as a try that was not acknowledged
            try:
                await asyncio.wait_for(acked.wait(), timeout=self.redeliver_after_s)
                return
            except TimeoutError:
                continue
        with self._lock:
            delivery.gave_up = not delivery.acked

    async def _next_socket(self) -> tuple[int, web.WebSocketResponse]:
        while True:
            with self._lock:
                open_ = [(c, ws) for c, ws in sorted(self._sockets.items()) if not ws.closed]
            if open_:
                return open_[next(self._round_robin) % len(open_)]
            await asyncio.sleep(0.02)

    async def _disconnect(self, reason: str, connection: int | None) -> list[int]:
        with self._lock:
            targets = [(c, ws) for c, ws in self._sockets.items() if connection in (None, c)]
        for _, ws in targets:
            await ws.send_json({"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-fake"}})
            asyncio.get_running_loop().call_later(
                self.close_after_disconnect_s, lambda ws=ws: asyncio.ensure_future(ws.close())
            )
        return [c for c, _ in targets]

    async def _drop(self, connection: int | None) -> list[int]:
        with self._lock:
            targets = [(c, ws) for c, ws in self._sockets.items() if connection in (None, c)]
        for _, ws in targets:
            await ws.close(code=1011)  # 1006 may not be sent; 1011: the server failed
        return [c for c, _ in targets]

    async def _close_all(self, *, code: int) -> None:
        with self._lock:
            sockets = list(self._sockets.values())
        for ws in sockets:
            await ws.close(code=code)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the Socket Mode fake is not running")
        return self._loop

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._running_loop()).result(timeout=10)


@pytest.fixture
def slack_socket() -> Iterator[SlackSocketFake]:
    """A running Socket Mode fake, stopped after the test."""
    with SlackSocketFake() as fake:
        yield fake
