"""Refusing a request framed two ways: both ``Content-Length`` and ``Transfer-Encoding``.

RFC 9112 §6.3 calls such a request a smuggling risk: a proxy in front may frame it by one header
and we by the other. uvicorn's h11 parser lets it through with both headers in the scope and
frames the body as chunked, so a client that sent ``Content-Length`` bytes of plain body got no
answer at all: the edge waited for a chunk that never came. (The httptools parser, when
installed, refuses the request itself.) This guard answers 400 before any body is read, with
``Connection: close`` so that the server closes the connection once the answer is written, as the
RFC requires: whatever bytes follow cannot be read as a second request.
"""

from __future__ import annotations

import json
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["AmbiguousFraming"]

log = logging.getLogger("ocsgw.edge")

_BODY = json.dumps({"error": "request has both Content-Length and Transfer-Encoding"}).encode()


class AmbiguousFraming:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _framed_twice(scope):
            # The header values are the sender's: not logged.
            log.warning("refused a request with both Content-Length and Transfer-Encoding")
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
                }
            )
            await send({"type": "http.response.body", "body": _BODY})
            return
        await self.app(scope, receive, send)


def _framed_twice(scope: Scope) -> bool:
    names = {name.lower() for name, _ in scope.get("headers", ())}
    return b"content-length" in names and b"transfer-encoding" in names
