"""A local fake of Meta's WhatsApp Cloud API (Graph API), written from Meta's documentation
(docs/WHATSAPP.md cites the pages).

``FakeWhatsApp`` serves, on 127.0.0.1 (uvicorn in a background thread):

- ``POST /{version}/{phone_number_id}/messages``: text, image/video/audio/document (by ``id`` or
  ``link``), template and the read receipt (``status: read`` with ``typing_indicator``). It checks
  what Meta checks (the Bearer token, ``messaging_product``, a text body of at most 4,096
  characters, a known template whose parameter has no line break) and answers
  ``{"messaging_product", "contacts", "messages": [{"id": "wamid..."}]}``.
- ``POST /{version}/{phone_number_id}/media`` (multipart ``file``, ``type``, ``messaging_product``)
  → ``{"id"}``; ``GET /{version}/{media_id}`` → ``{"url", "mime_type", "sha256", "file_size",
  "id", "messaging_product"}``; ``GET /media/{media_id}`` the bytes, only with the token (Meta's
  CDN answers 401 without it).
- Errors with Meta's real bodies, ``{"error": {"message", "type", "code", "error_data":
  {"messaging_product", "details"}, "fbtrace_id"}}``: ``fail_next(code)`` for 130429, 131056,
  131047, 131026, 131000, 190 (401), 100; ``close_window(wa_id)`` makes every free-form message
  to that user fail with 131047 while templates pass; ``pair_limit`` refuses (131056) more than
  that many messages to one user within ``pair_window_s``.

Webhook bodies as Meta sends them, signed with ``X-Hub-Signature-256``: ``message_webhook``,
``status_webhook`` and ``signed_headers``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Self

import httpx
import pytest
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.servers import ServedApp

__all__ = [
    "ERRORS",
    "FakeWhatsApp",
    "PHONE_NUMBER_ID",
    "TOKEN",
    "fake_whatsapp",
    "message_webhook",
    "signed_headers",
    "status_webhook",
]

PHONE_NUMBER_ID = "106540352242922"
TOKEN = "EAAJB-test-token"
VERSION = "v23.0"

#: code → (HTTP status, the title Meta puts in ``message``, ``error_data.details``).
ERRORS: dict[int, tuple[int, str, str]] = {
    130429: (400, "(#130429) Rate limit hit", "Cloud API message throughput has been reached."),
    131056: (400, "(#131056) (Business Account, Consumer Account) pair rate limit hit",
             "Message failed to send because there were too many messages sent from this phone number to the "
             "same phone number in a short period of time."),
    131047: (400, "(#131047) Re-engagement message",
             "Message failed to send because more than 24 hours have passed since the customer last replied "
             "to this number."),
    131026: (400, "(#131026) Message Undeliverable", "Unable to deliver message. Reasons can include: the "
             "recipient phone number is not a WhatsApp phone number."),
    131000: (500, "(#131000) Something went wrong", "Message failed to send due to an unknown error."),
    131053: (400, "(#131053) Media upload error", "Unable to upload the media used in the message."),
    132001: (404, "(#132001) Template name does not exist in the translation",
             "template name does not exist in the specified language"),
    132018: (400, "(#132018) There was an issue with the parameters in your template.",
             "Param text cannot have new-line/tab characters or more than 4 consecutive spaces"),
    100: (400, "(#100) Invalid parameter", "Param text['body'] must be at most 4096 characters long."),
}


def error_body(code: int) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body Meta answers for ``code``."""
    if code == 190:
        return 401, {"error": {
            "message": "Error validating access token: Session has expired on Friday, 04-Dec-26 10:00:00 PST.",
            "type": "OAuthException", "code": 190, "error_subcode": 463, "fbtrace_id": "AbCdEfGh123",
        }}
    status, title, details = ERRORS[code]
    return status, {"error": {
        "message": title, "type": "OAuthException", "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details}, "fbtrace_id": "AbCdEfGh123",
    }}


@dataclass(frozen=True, slots=True)
class Sent:
    """A message the fake accepted: its wamid, recipient, type, body and arrival (monotonic s)."""

    wamid: str
    to: str
    type: str
    body: dict[str, Any]
    at: float
    authorization: str

    @property
    def text(self) -> str:
        if self.type == "text":
            return str(self.body["text"]["body"])
        if self.type == "template":
            return str(self.body["template"]["components"][0]["parameters"][0]["text"])
        return ""


@dataclass
class _Media:
    data: bytes
    mime_type: str


@dataclass
class FakeWhatsApp(ServedApp):
    """The Graph API for one phone number; see the module docstring."""

    token: str = TOKEN
    phone_number_id: str = PHONE_NUMBER_ID
    templates: set[tuple[str, str]] = field(default_factory=lambda: {("ocs_update", "en")})
    pair_limit: int | None = None
    pair_window_s: float = 6.0
    #: Where ``GET /{media_id}`` says the bytes are; None: this fake's own ``/media/{id}``.
    media_url_base: str | None = None
    #: Where to POST the ``sent`` status of each accepted message, signed with ``app_secret``,
    #: as Meta does (None: no statuses); it echoes the message's ``biz_opaque_callback_data``.
    status_url: str | None = None
    app_secret: str = ""
    _sent: list[Sent] = field(default_factory=list)
    _reads: list[dict[str, Any]] = field(default_factory=list)
    _media: dict[str, _Media] = field(default_factory=dict)
    _media_requests: list[str] = field(default_factory=list)
    _failures: list[int] = field(default_factory=list)
    _closed: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    refused: list[int] = field(default_factory=list)

    def start(self) -> Self:
        super().start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    @property
    def api_base_url(self) -> str:
        return f"{self.url}/{VERSION}"

    # -- knobs ----------------------------------------------------------------------------------

    def fail_next(self, code: int, *, times: int = 1) -> None:
        with self._lock:
            self._failures.extend([code] * times)

    def close_window(self, wa_id: str) -> None:
        self._closed.add(wa_id)

    def add_media(self, data: bytes, mime_type: str) -> str:
        media_id = str(900000 + next(self._ids))
        self._media[media_id] = _Media(data, mime_type)
        return media_id

    # -- what happened --------------------------------------------------------------------------

    def sent(self, to: str | None = None) -> list[Sent]:
        with self._lock:
            return [s for s in self._sent if to is None or s.to == to]

    def texts(self, to: str | None = None) -> list[str]:
        return [s.text for s in self.sent(to) if s.type in ("text", "template")]

    def reads(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._reads)

    def uploaded(self, media_id: str) -> bytes:
        return self._media[media_id].data

    def media_authorizations(self) -> list[str]:
        """The Authorization header (or "") of every byte download, in order."""
        with self._lock:
            return list(self._media_requests)

    # -- the app --------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(routes=[
            Route(f"/{VERSION}/{{number}}/messages", self._messages, methods=["POST"]),
            Route(f"/{VERSION}/{{number}}/media", self._upload, methods=["POST"]),
            Route(f"/{VERSION}/{{media_id}}", self._media_info, methods=["GET"]),
            Route("/media/{media_id}", self._media_bytes, methods=["GET"]),
        ])

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.token}"

    def _error(self, code: int) -> JSONResponse:
        status, body = error_body(code)
        self.refused.append(code)
        return JSONResponse(body, status_code=status)

    def _take_failure(self) -> int | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    async def _messages(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(190)
        if request.path_params["number"] != self.phone_number_id:
            return self._error(100)
        body = await request.json()
        if body.get("messaging_product") != "whatsapp":
            return self._error(100)
        if body.get("status") == "read":
            with self._lock:
                self._reads.append(body)
            return JSONResponse({"success": True})
        if (code := self._take_failure()) is not None:
            return self._error(code)
        kind, to = body.get("type"), str(body.get("to", ""))
        if kind == "text":
            if len(body["text"]["body"]) > 4096:
                return self._error(100)
        elif kind == "template":
            template = body["template"]
            if (template["name"], template["language"]["code"]) not in self.templates:
                return self._error(132001)
            for component in template.get("components", ()):
                for parameter in component.get("parameters", ()):
                    text = parameter.get("text", "")
                    if "\n" in text or "\t" in text or "     " in text:
                        return self._error(132018)
        elif kind in ("image", "video", "audio", "document"):
            media = body[kind]
            if "id" in media and media["id"] not in self._media:
                return self._error(131053)
        else:
            return self._error(100)
        if kind != "template" and to in self._closed:
            return self._error(131047)
        now = time.monotonic()
        with self._lock:
            if self.pair_limit is not None:
                recent = [s for s in self._sent if s.to == to and now - s.at < self.pair_window_s]
                if len(recent) >= self.pair_limit:
                    self.refused.append(131056)
                    status, error = error_body(131056)
                    return JSONResponse(error, status_code=status)
            wamid = f"wamid.HBgL{to}{next(self._ids):06d}"
            self._sent.append(Sent(wamid, to, kind, body, now, request.headers.get("authorization", "")))
        answer: dict[str, Any] = {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}],
                                  "messages": [{"id": wamid}]}
        if kind == "template":
            answer["messages"][0]["message_status"] = "accepted"
        if self.status_url:
            status = status_webhook(wamid, "sent", wa_id=to, phone_number_id=self.phone_number_id)
            callback = body.get("biz_opaque_callback_data")
            if callback:
                status["entry"][0]["changes"][0]["value"]["statuses"][0]["biz_opaque_callback_data"] = callback
            threading.Thread(target=self._post_status, args=(encode(status),), daemon=True).start()
        return JSONResponse(answer)

    def _post_status(self, body: bytes) -> None:
        assert self.status_url is not None
        for _ in range(5):  # Meta retries a webhook that is not answered 200
            try:
                if httpx.post(self.status_url, content=body, headers=signed_headers(body, self.app_secret),
                              timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)

    async def _upload(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(190)
        form = await request.form()
        upload = form.get("file")
        if form.get("messaging_product") != "whatsapp" or not isinstance(upload, UploadFile):
            return self._error(100)
        media_id = self.add_media(await upload.read(), str(form.get("type") or upload.content_type))
        return JSONResponse({"id": media_id})

    async def _media_info(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(190)
        media_id = request.path_params["media_id"]
        media = self._media.get(media_id)
        if media is None:
            return self._error(100)
        base = self.media_url_base or self.url
        return JSONResponse({
            "messaging_product": "whatsapp", "url": f"{base}/media/{media_id}?ext=1&hash=abc",
            "mime_type": media.mime_type, "sha256": hashlib.sha256(media.data).hexdigest(),
            "file_size": len(media.data), "id": media_id,
        })

    async def _media_bytes(self, request: Request) -> Response:
        with self._lock:
            self._media_requests.append(request.headers.get("authorization", ""))
        if not self._authorized(request):
            return Response(status_code=401)
        media = self._media.get(request.path_params["media_id"])
        if media is None:
            return Response(status_code=404)
        return Response(media.data, media_type=media.mime_type)


# -- webhook bodies -------------------------------------------------------------------------------


def _change(value: dict[str, Any], phone_number_id: str) -> dict[str, Any]:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id}, **value}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}]}


def message_webhook(
    wa_id: str, message: dict[str, Any], *, wamid: str | None = None, name: str = "Ada",
    timestamp: int | None = None, phone_number_id: str = PHONE_NUMBER_ID,
) -> dict[str, Any]:
    """A ``messages`` webhook with one user message; ``message`` holds ``type`` and its object,
    e.g. ``{"type": "text", "text": {"body": "hi"}}``."""
    msg = {"from": wa_id, "id": wamid or f"wamid.in.{time.time_ns()}",
           "timestamp": str(timestamp if timestamp is not None else int(time.time())), **message}
    return _change({"contacts": [{"profile": {"name": name}, "wa_id": wa_id}], "messages": [msg]}, phone_number_id)


def status_webhook(
    wamid: str, status: str, *, wa_id: str = "16505551234", error_code: int | None = None,
    phone_number_id: str = PHONE_NUMBER_ID,
) -> dict[str, Any]:
    """A ``statuses`` webhook for a message we sent."""
    item: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(int(time.time())), "recipient_id": wa_id}
    if status in ("sent", "delivered"):
        item["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "service"}
    if error_code is not None:
        _, title, details = ERRORS[error_code]
        item["errors"] = [{"code": error_code, "title": title.split(") ", 1)[-1], "message": title.split(") ", 1)[-1],
                           "error_data": {"details": details}}]
    return _change({"statuses": [item]}, phone_number_id)


def signed_headers(body: bytes, app_secret: str) -> dict[str, str]:
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-hub-signature-256": f"sha256={digest}"}


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


@pytest.fixture
def fake_whatsapp() -> Iterator[FakeWhatsApp]:
    """A running fake Graph API, stopped after the test."""
    with FakeWhatsApp() as fake:
        yield fake
