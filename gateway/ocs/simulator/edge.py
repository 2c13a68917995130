"""The network between the gateway and the simulated OCS: round-trip delay and cut connections.

This sits outside Starlette's own middleware so that it is handed the server's ``send`` as is;
that is what lets it reach the TCP connection and close it (see ``_cut``).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DROP_SCOPE_KEY", "SimulatedConnectionDrop", "mark_for_drop", "through_edge"]

#: Set in the request scope by a route that accepted the request but whose answer must be lost.
DROP_SCOPE_KEY = "ocs_simulator.drop_connection"


class SimulatedConnectionDrop(ConnectionError):
    """Raised where the server's connection cannot be reached (e.g. httpx's ``ASGITransport`` or
    the simulator mounted inside another app): the cut then happens after the status line."""


class _Abortable(Protocol):
    def abort(self) -> None: ...


def mark_for_drop(scope: Scope) -> None:
    """Have ``through_edge`` cut the connection instead of sending this request's response."""
    scope[DROP_SCOPE_KEY] = True


def _server_transport(send: Send) -> _Abortable | None:
    """uvicorn's ``send`` is a bound method of its per-request cycle, which holds the asyncio
    transport of the connection (h11, httptools and zttp alike)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    return transport if callable(getattr(transport, "abort", None)) else None


async def _cut(send: Send, start: Message) -> None:
    """Close the connection without a byte of the response.

    Under uvicorn the transport is aborted before anything was written: the client, which has
    sent its whole request, reads end-of-file where the status line should be, and httpx raises
    ``RemoteProtocolError("Server disconnected without sending a response.")`` (``ReadError``
    if the peer's stack turns the close into a reset). The request took full effect on this side.
    One loop turn later uvicorn has run ``connection_lost`` and ignores the rest of the response,
    so it neither logs an error nor tries a 500.

    Elsewhere the status line and headers go out, then ``SimulatedConnectionDrop`` is raised: a
    real server closes the connection mid-response (httpx: ``RemoteProtocolError`` on the body),
    and ``ASGITransport`` hands the exception itself to the caller.
    """
    transport = _server_transport(send)
    if transport is not None:
        transport.abort()
        await asyncio.sleep(0)
        return
    await send(start)
    raise SimulatedConnectionDrop("simulated connection drop after the request was accepted")


async def through_edge(app: ASGIApp, rtt_s: float, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one HTTP request through the simulated network.

    Half the round trip passes before the app sees the request and half before the response
    starts, so OCS state changes at the midpoint, as it would on a real link. The delays are
    ``asyncio.sleep``: many requests can be in flight at once and the loop never blocks.
    """
    half = max(0.0, rtt_s) / 2
    if half:
        await asyncio.sleep(half)
    dropped = False

    async def edge_send(message: Message) -> None:
        nonlocal dropped
        if dropped:
            return
        if message["type"] == "http.response.start":
            if half:
                await asyncio.sleep(half)
            if scope.get(DROP_SCOPE_KEY):
                dropped = True
                await _cut(send, message)
                return
        await send(message)

    await app(scope, receive, edge_send)
