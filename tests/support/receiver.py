"""A callback receiver for webhook channels: verifies each Standard Webhooks signature and
records the body, like a customer's app would: reply parts (``texts``) and, for a channel with
``show_progress: true``, progress callbacks (``progress``)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.webhook import signing

__all__ = ["CallbackReceiver"]


@dataclass
class CallbackReceiver:
    secret: str
    #: Status codes to answer with before accepting (e.g. [503, 503] fails twice).
    fail_with: list[int] = field(default_factory=list)
    #: Headers sent with those failures (e.g. ``{"Retry-After": "0"}``: the adapter's default wait is 5 s).
    fail_headers: dict[str, str] = field(default_factory=dict)
    #: Per part number (the body's ``part``): status codes to answer with before accepting it.
    fail_parts: dict[int, list[int]] = field(default_factory=dict)
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    #: The webhook-id of every delivery attempt, refused ones included.
    attempt_ids: list[str] = field(default_factory=list)
    webhook_ids: list[str] = field(default_factory=list)
    #: Called (in a thread) with each delivery's body before it is answered: a test's hook to
    #: inject a fault at the moment the platform has the part (cut the worker's Redis, say).
    on_delivery: Callable[[dict[str, Any]], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        key = signing.decode_secret(self.secret)

        async def receive(request: Request) -> Response:
            body = await request.body()
            headers = {k.lower(): v for k, v in request.headers.items()}
            signing.verify(key, headers, body)  # raises: a bad signature fails the test loudly
            if self.on_delivery is not None:
                await asyncio.to_thread(self.on_delivery, json.loads(body))
            with self._lock:
                self.attempts += 1
                self.attempt_ids.append(headers["webhook-id"])
                if self.fail_with:
                    return Response(status_code=self.fail_with.pop(0), headers=self.fail_headers)
                refusals = self.fail_parts.get(json.loads(body).get("part"), [])
                if refusals:
                    return Response(status_code=refusals.pop(0), headers=self.fail_headers)
                if headers["webhook-id"] in self.webhook_ids:
                    return JSONResponse({"duplicate": True})  # what a careful receiver does
                self.webhook_ids.append(headers["webhook-id"])
                self.received.append(json.loads(body))
            return JSONResponse({"ok": True})

        return Starlette(routes=[Route("/callback", receive, methods=["POST"])])

    def texts(self, conversation_id: str | None = None) -> list[str]:
        """The texts of the reply parts received (progress callbacks are not replies)."""
        with self._lock:
            return [m["text"] for m in self.received if conversation_id in (None, m["conversation_id"]) and m["text"]
                    and m.get("type") != "progress"]

    def progress(self, conversation_id: str | None = None) -> list[str]:
        """The lines of the ``progress`` callbacks received, in order (repeats dropped by id)."""
        with self._lock:
            return [m["text"] for m in self.received if conversation_id in (None, m["conversation_id"])
                    and m.get("type") == "progress"]
