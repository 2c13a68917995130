"""Counting inbound platform requests: ``ocsgw_inbound_requests_total{channel,kind,outcome}`` and
``ocsgw_inbound_ack_seconds{channel}`` for Prometheus, and the per-minute counts the console reads
(``gateway/store/traffic.py``, once the lifespan has put a ``TrafficRecorder`` on the app's
state): one place sees every answer, so the two can never disagree.

A pure ASGI middleware outside everything else (Starlette's advice: no ``BaseHTTPMiddleware``),
so it sees every answer to a channel's inbound route, the 413s of the body limit and the 4xx of
the error table included, and times the whole request, body read and all. The route says what
became of a request it answered 200 (accepted, duplicate, ignored) through ``note_outcome``;
every other answer is named by its status. Listeners (Socket Mode, long polling) have no HTTP
request: ``counted_admit`` counts their events where they are stored.

Labels stay bounded: a path naming a channel that is not configured is counted under channel
``-``, never under the name it gave.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.core.channel import Admit
from gateway.core.errors import StoreUnavailable
from gateway.core.logs import bound, conversation_label
from gateway.core.metrics import Metrics
from gateway.core.models import Inbound
from gateway.store.traffic import TrafficRecorder

__all__ = ["CLIENT_CLOSED_REQUEST", "InboundMetrics", "admit_with_ids", "counted_admit", "note_outcome"]

log = logging.getLogger("ocsgw.edge")

_SCOPE_KEY = "ocsgw.inbound"
#: The status the edge gives a request whose client hung up before its body arrived (nginx's
#: 499; nobody receives it): counted as ``client_disconnected``, and as a 4xx in the console's
#: traffic, because the sender ended it and anyone can, so it must not look like our failure.
CLIENT_CLOSED_REQUEST = 499
#: An answer the route did not name, by status (the edge's error table, gateway/edge/app.py).
_BY_STATUS = {
    400: "invalid_payload",
    401: "invalid_signature",
    403: "invalid_signature",
    404: "unknown_channel",
    413: "too_large",
    422: "invalid_payload",
    CLIENT_CLOSED_REQUEST: "client_disconnected",
    503: "unavailable",
}
_UNKNOWN = "-"


@dataclass(slots=True)
class _Note:
    outcome: str | None = None


def note_outcome(scope: Scope, outcome: str) -> None:
    """Say what became of an inbound request answered 200: accepted, duplicate or ignored."""
    note = scope.get(_SCOPE_KEY)
    if isinstance(note, _Note):
        note.outcome = outcome


class InboundMetrics:
    """Parameters:
    paths: the inbound route of each channel type (``Services.inbound_paths``).
    channels: each configured channel's type, by name.
    metrics: where to count.
    """

    def __init__(self, app: ASGIApp, *, paths: Mapping[str, str], channels: Mapping[str, str], metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._channels = dict(channels)
        self._routes: list[tuple[str, re.Pattern[str]]] = [(kind, compile_path(path)[0]) for kind, path in paths.items()]

    def _match(self, path: str) -> tuple[str, str] | None:
        for kind, pattern in self._routes:
            found = pattern.match(path)
            if found:
                channel = found.groupdict().get("channel", "")
                return kind, channel if self._channels.get(channel) == kind else _UNKNOWN
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = self._match(scope["path"]) if scope["type"] == "http" and scope.get("method") == "POST" else None
        if matched is None:
            await self.app(scope, receive, send)
            return
        kind, channel = matched
        started = time.perf_counter()
        acked: float | None = None
        status: int | None = None
        note = _Note()
        scope[_SCOPE_KEY] = note

        async def observed_send(message: Message) -> None:
            nonlocal acked, status
            if message["type"] == "http.response.start" and status is None:
                status, acked = int(message["status"]), time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            if status == 200:
                outcome = note.outcome or "ignored"
            else:
                outcome = _BY_STATUS.get(status or 500, "error")
            self.metrics.count_inbound(channel, kind, outcome, (acked or time.perf_counter()) - started)
            app = scope.get("app")
            traffic = getattr(getattr(app, "state", None), "traffic", None)
            if isinstance(traffic, TrafficRecorder):
                traffic.note(channel, status or 500)


async def admit_with_ids(admit: Admit, inbound: Inbound, *, reveal: bool) -> bool:
    """``admit(inbound)`` with the event's ids bound for every line logged meanwhile (redis-py's
    included), a duplicate said once: the HTTP route and the listeners store events alike.
    ``reveal``: ``log_message_text`` (the raw conversation key instead of its hash)."""
    with bound(event_id=inbound.event_id, conversation=conversation_label(inbound.key, reveal=reveal)):
        stored = await admit(inbound)
        if not stored:
            log.info("duplicate event")
    return stored


def counted_admit(
    admit: Admit, metrics: Metrics, traffic: TrafficRecorder, *, channel: str, kind: str, reveal: bool = False
) -> Admit:
    """``admit`` for a listener, counting each event as the edge counts a request and binding
    its ids for the lines logged while it is stored (``reveal``: ``log_message_text``)."""

    async def counted(inbound: Inbound) -> bool:
        try:
            stored = await admit_with_ids(admit, inbound, reveal=reveal)
        except StoreUnavailable:
            metrics.count_inbound(channel, kind, "unavailable")
            traffic.note(channel, 503)
            raise
        metrics.count_inbound(channel, kind, "accepted" if stored else "duplicate")
        traffic.note(channel, 200)
        return stored

    return counted
