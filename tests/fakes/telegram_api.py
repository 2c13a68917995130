"""A local fake of the Telegram Bot API that speaks the real protocol (docs/PLATFORMS.md §1.1-1.2, §4).

``FakeTelegram`` serves ``/bot<token>/<method>`` and ``/file/bot<token>/<path>`` on 127.0.0.1
(uvicorn in a background thread, so sync tests, async tests and a gateway in another process
can all use it). It accepts what PTB sends (form fields with JSON-encoded values, multipart
uploads) and JSON bodies, answers ``{ok, result}`` or ``{ok: false, error_code, description,
parameters}`` with the HTTP status equal to ``error_code``, records every call, and has knobs
to inject the failures the gateway must survive::

    with FakeTelegram() as tg:
        tg.add_bot("123:abc", username="clinic_bot")
        tg.rate_limit_next("sendMessage", retry_after=3)     # 429 + Retry-After
        tg.block_chat(42)                                    # 403 bot was blocked
        tg.reject_html_next()                                # 400 can't parse entities
        tg.refuse_drafts = True                              # 400 for every sendMessageDraft
        tg.push_update("123:abc", message_update(1, chat_id=42, user_id=42, text="hi"))  # for getUpdates
        ...
        assert [c.params["text"] for c in tg.calls("sendMessage")] == [...]

``getUpdates`` works like Telegram's (docs/PLATFORMS.md §1.3): an update stays pending until a call
with ``offset`` past its id confirms it; with nothing pending the call waits up to ``timeout``
seconds for one; a webhook set makes it fail with 409, and a second call while one waits
ends the first with 409 "terminated by other getUpdates request".

``sendMessageDraft`` (Bot API 9.3+) works in private chats only: a group's chat id (negative) is
answered 400, as is every draft while ``refuse_drafts`` is set (a Bot API server without drafts);
``drafts(chat_id)`` lists the ``(draft_id, text)`` of those accepted.

HTML sent with ``parse_mode=HTML`` is checked like Telegram does (allowed tags only, balanced,
``< > &`` escaped, length ≤ 4096 UTF-16 units after parsing), so a renderer bug fails a test.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
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
    "Call",
    "DRAFTS_UNAVAILABLE",
    "DRAFT_PEER_INVALID",
    "FakeBot",
    "FakeTelegram",
    "Upload",
    "fake_telegram",
    "message_update",
    "telegram_html_text",
]

#: Fields whose values are text even when they look like JSON ("123" stays a string).
_TEXT_FIELDS = frozenset({"text", "caption", "url", "secret_token", "file_id", "callback_query_id",
                          "action", "parse_mode", "ip_address", "description", "emoji"})
_METHODS = ("getMe", "sendMessage", "sendChatAction", "sendPhoto", "sendDocument", "getFile",
            "setWebhook", "deleteWebhook", "getWebhookInfo", "answerCallbackQuery", "getUpdates",
            "sendMessageDraft", "sendVoice")
#: The fake's wording for a draft outside a private chat (the Bot API names the chat type wrong).
DRAFT_PEER_INVALID = "Bad Request: TEXTDRAFT_PEER_INVALID"
#: ... and for a Bot API server that has no drafts (``refuse_drafts``).
DRAFTS_UNAVAILABLE = "Bad Request: method sendMessageDraft is not available"
_WEBHOOK_CONFLICT = ("Conflict: can't use getUpdates method while webhook is active; "
                     "use deleteWebhook to delete the webhook first")
_POLL_CONFLICT = ("Conflict: terminated by other getUpdates request; "
                  "make sure that only one bot instance is running")
_CANONICAL = {name.lower(): name for name in _METHODS}
_CHAT_ACTIONS = frozenset({"typing", "upload_photo", "record_video", "upload_video", "record_voice",
                           "upload_voice", "upload_document", "choose_sticker", "find_location",
                           "record_video_note", "upload_video_note"})
_ALLOWED_TAGS = frozenset({"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span",
                           "tg-spoiler", "a", "code", "pre", "blockquote", "tg-emoji"})
_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
DOWNLOAD_LIMIT = 20 * 1024 * 1024


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Call:
    """One Bot API request as the fake received it; ``status`` is the HTTP answer."""

    method: str
    token: str
    params: dict[str, Any]
    files: dict[str, Upload]
    status: int = 200
    at: float = 0.0


@dataclass
class FakeBot:
    token: str
    id: int
    username: str
    first_name: str = "Test Bot"
    webhook: dict[str, Any] = field(default_factory=dict)
    pending_update_count: int = 0
    last_error_message: str | None = None
    #: Updates for getUpdates, oldest first, until an offset confirms them.
    updates: list[dict[str, Any]] = field(default_factory=list)
    #: Bumped by every getUpdates: a waiting call that sees it move was superseded (409).
    poll_generation: int = 0
    #: Every update id getUpdates handed out, repeats included (an unconfirmed one comes again).
    fetched: list[int] = field(default_factory=list)

    def user(self) -> dict[str, Any]:
        return {"id": self.id, "is_bot": True, "first_name": self.first_name, "username": self.username,
                "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}


class ApiError(Exception):
    def __init__(self, code: int, description: str, **parameters: Any) -> None:
        super().__init__(description)
        self.code, self.description, self.parameters = code, description, parameters


@dataclass
class _Failure:
    method: str
    token: str | None
    error: ApiError
    times: int


class FakeTelegram(ServedApp):
    """The fake Bot API server and its knobs; use as a (sync or async) context manager."""

    def __init__(self) -> None:
        self.bots: dict[str, FakeBot] = {}
        self.files: dict[str, tuple[str, bytes, int]] = {}  # file_id → (file_path, data, size)
        self.blocked: dict[int, str] = {}
        self.migrated: dict[int, int] = {}
        self._calls: list[Call] = []
        self._failures: list[_Failure] = []
        self._reject_html = 0
        #: Chats whose user does not take voice messages from bots (400 VOICE_MESSAGES_FORBIDDEN).
        self.voice_forbidden: set[int] = set()
        #: Answer every sendMessageDraft with 400 (a Bot API server without drafts).
        self.refuse_drafts = False
        self._ids = itertools.count(1000)
        self._lock = threading.Lock()
        self.url = ""

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        super().start()
        return self

    def __enter__(self) -> Self:
        return self.start()


    # -- knobs ----------------------------------------------------------------------------------

    def add_bot(self, token: str, *, username: str, bot_id: int | None = None) -> FakeBot:
        bot = FakeBot(token, bot_id or int(token.split(":", 1)[0]), username)
        self.bots[token] = bot
        return bot

    def add_file(self, file_id: str, data: bytes, *, file_path: str | None = None, size: int | None = None) -> None:
        """Make ``file_id`` known to getFile; ``size`` may claim more bytes than ``data`` has."""
        self.files[file_id] = (file_path or f"documents/{file_id}", data, len(data) if size is None else size)

    def fail_next(self, method: str, code: int, description: str, *, times: int = 1, token: str | None = None,
                  retry_after: int | None = None, migrate_to_chat_id: int | None = None) -> None:
        """Answer the next ``times`` calls of ``method`` (by ``token``, or any) with this error."""
        parameters = {k: v for k, v in (("retry_after", retry_after), ("migrate_to_chat_id", migrate_to_chat_id))
                      if v is not None}
        with self._lock:
            self._failures.append(_Failure(method.lower(), token, ApiError(code, description, **parameters), times))

    def rate_limit_next(self, method: str, retry_after: int, *, times: int = 1, token: str | None = None) -> None:
        self.fail_next(method, 429, f"Too Many Requests: retry after {retry_after}", times=times,
                       token=token, retry_after=retry_after)

    def block_chat(self, chat_id: int, description: str = "Forbidden: bot was blocked by the user") -> None:
        self.blocked[chat_id] = description

    def migrate_chat(self, chat_id: int, new_chat_id: int) -> None:
        self.migrated[chat_id] = new_chat_id

    def push_update(self, token: str, update: dict[str, Any]) -> None:
        """Queue ``update`` for the bot's getUpdates (it needs an ``update_id``)."""
        with self._lock:
            self.bots[token].updates.append(update)

    def fetched_updates(self, token: str) -> list[int]:
        """Every update id getUpdates returned, in order, repeats included."""
        with self._lock:
            return list(self.bots[token].fetched)

    def pending_updates(self, token: str) -> list[int]:
        """The ids of updates not yet confirmed by an offset."""
        with self._lock:
            return [u["update_id"] for u in self.bots[token].updates]

    def reject_html_next(self, times: int = 1) -> None:
        """Refuse the next ``times`` HTML messages with 400 can't parse entities."""
        self._reject_html += times

    # -- assertions -----------------------------------------------------------------------------

    def calls(self, method: str | None = None, *, token: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if (method is None or c.method.lower() == method.lower())
                    and (token is None or c.token == token)]

    def sent_messages(self, chat_id: int | None = None, *, token: str | None = None) -> list[Call]:
        """The sendMessage calls that succeeded, in order."""
        return [c for c in self.calls("sendMessage", token=token)
                if c.status == 200 and (chat_id is None or c.params.get("chat_id") == chat_id)]

    def sent_voices(self, chat_id: int | None = None, *, token: str | None = None) -> list[Call]:
        """The sendVoice calls that succeeded, in order (the audio is ``files["voice"]``)."""
        return [c for c in self.calls("sendVoice", token=token)
                if c.status == 200 and (chat_id is None or c.params.get("chat_id") == chat_id)]

    def drafts(self, chat_id: int | None = None, *, token: str | None = None) -> list[tuple[int, str]]:
        """``(draft_id, text)`` of the sendMessageDraft calls that succeeded, in order."""
        return [(int(c.params["draft_id"]), str(c.params.get("text") or "")) for c in self.calls("sendMessageDraft", token=token)
                if c.status == 200 and (chat_id is None or c.params.get("chat_id") == chat_id)]

    def sent_texts(self, chat_id: int | None = None, *, token: str | None = None) -> list[str]:
        """Texts (as sent, with markup) of the sendMessage calls that succeeded, in order."""
        return [str(c.params["text"]) for c in self.sent_messages(chat_id, token=token)]

    async def deliver(self, update: dict[str, Any], *, token: str, url: str | None = None,
                      secret: str | None = None) -> httpx.Response:
        """POST ``update`` to the bot's webhook like Telegram does (docs/PLATFORMS.md §1.3), once."""
        bot = self.bots[token]
        target = url or bot.webhook.get("url")
        if not target:
            raise RuntimeError("no webhook set for this bot: call setWebhook or pass url=")
        headers = {"content-type": "application/json"}
        sent_secret = secret if secret is not None else bot.webhook.get("secret_token")
        if sent_secret:
            headers["x-telegram-bot-api-secret-token"] = sent_secret
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(target, content=json.dumps(update), headers=headers)

    # -- the server -----------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(routes=[
            Route("/bot{token}/{method}", self._method_endpoint, methods=["GET", "POST"]),
            Route("/file/bot{token}/{file_path:path}", self._file_endpoint, methods=["GET"]),
        ])

    async def _method_endpoint(self, request: Request) -> Response:
        token, method = request.path_params["token"], request.path_params["method"]
        bot = self.bots.get(token)
        if bot is None:
            return _error(ApiError(401, "Unauthorized"))
        params, files = await _read_params(request)
        name = _CANONICAL.get(method.lower(), method)
        try:
            self._injected_failure(name, token)
            handler = getattr(self, f"_api_{name}", None)
            if name == "getUpdates":
                result = await self._get_updates(bot, params)
            elif handler is None:
                raise ApiError(404, "Not Found: method not found")
            else:
                result = handler(bot, params, files)
        except ApiError as exc:
            self._record(Call(name, token, params, files, exc.code, time.time()))
            return _error(exc)
        self._record(Call(name, token, params, files, 200, time.time()))
        body: dict[str, Any] = {"ok": True, "result": result}
        if name in ("setWebhook", "deleteWebhook"):
            body["description"] = "Webhook was set" if name == "setWebhook" and params.get("url") else "Webhook was deleted"
        return JSONResponse(body)

    async def _file_endpoint(self, request: Request) -> Response:
        if request.path_params["token"] not in self.bots:
            return _error(ApiError(401, "Unauthorized"))
        path = request.path_params["file_path"]
        for file_path, data, _ in self.files.values():
            if file_path == path:
                return Response(data, media_type="application/octet-stream")
        return _error(ApiError(404, "Not Found: file not found"))

    def _record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    def _injected_failure(self, method: str, token: str) -> None:
        with self._lock:
            for failure in self._failures:
                if failure.method == method.lower() and failure.token in (None, token) and failure.times > 0:
                    failure.times -= 1
                    raise failure.error

    def _chat(self, params: dict[str, Any]) -> int:
        """The target chat id, after the checks Telegram makes (blocked, migrated)."""
        chat_id = params.get("chat_id")
        if not isinstance(chat_id, int):
            raise ApiError(400, "Bad Request: chat not found")
        if chat_id in self.blocked:
            raise ApiError(403, self.blocked[chat_id])
        if chat_id in self.migrated:
            raise ApiError(400, "Bad Request: group chat was upgraded to a supergroup chat",
                           migrate_to_chat_id=self.migrated[chat_id])
        return chat_id

    def _message(self, bot: FakeBot, params: dict[str, Any], **content: Any) -> dict[str, Any]:
        chat_id = self._chat(params)
        message: dict[str, Any] = {
            "message_id": next(self._ids), "date": int(time.time()), "from": bot.user(),
            "chat": {"id": chat_id, "type": "supergroup" if chat_id < 0 else "private"}, **content}
        if params.get("message_thread_id"):
            message["message_thread_id"] = params["message_thread_id"]
            message["is_topic_message"] = True
        return message

    # -- methods (named _api_<method>) ----------------------------------------------------------

    def _api_getMe(self, bot: FakeBot, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        return bot.user()

    def _api_sendMessage(self, bot: FakeBot, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        text = str(params.get("text") or "")
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        shown = text
        if str(params.get("parse_mode", "")).upper() == "HTML":
            with self._lock:
                refuse, self._reject_html = self._reject_html > 0, max(0, self._reject_html - 1)
            if refuse:
                raise ApiError(400, "Bad Request: can't parse entities: Unsupported start tag \"x\" at byte offset 0")
            shown = telegram_html_text(text)
        if len(shown.encode("utf-16-le")) // 2 > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        return self._message(bot, params, text=shown)

    def _api_sendMessageDraft(self, bot: FakeBot, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        """Bot API 9.3+: a draft in a private chat; ``draft_id`` non-zero, text ≤ 4096."""
        chat_id = self._chat(params)
        if self.refuse_drafts:
            raise ApiError(400, DRAFTS_UNAVAILABLE)
        if chat_id < 0:
            raise ApiError(400, DRAFT_PEER_INVALID)
        draft_id = params.get("draft_id")
        if not isinstance(draft_id, int) or isinstance(draft_id, bool) or draft_id == 0:
            raise ApiError(400, "Bad Request: invalid draft_id")
        text = str(params.get("text") or "")
        shown = telegram_html_text(text) if str(params.get("parse_mode", "")).upper() == "HTML" else text
        if len(shown.encode("utf-16-le")) // 2 > 4096:
            raise ApiError(400, "Bad Request: text is too long")
        return True

    def _api_sendChatAction(self, bot: FakeBot, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        if params.get("action") not in _CHAT_ACTIONS:
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        self._chat(params)
        return True

    def _api_sendPhoto(self, bot: FakeBot, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        upload = _upload(files, params, "photo")
        size = {"file_id": f"photo-{next(self._ids)}", "file_unique_id": "u", "width": 1, "height": 1,
                "file_size": len(upload.data)}
        return self._message(bot, params, photo=[size])

    def _api_sendDocument(self, bot: FakeBot, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        upload = _upload(files, params, "document")
        doc = {"file_id": f"doc-{next(self._ids)}", "file_unique_id": "u", "file_name": upload.filename,
               "mime_type": upload.content_type, "file_size": len(upload.data)}
        return self._message(bot, params, document=doc)

    def _api_sendVoice(self, bot: FakeBot, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        upload = _upload(files, params, "voice")
        chat_id = self._chat(params)
        if chat_id in self.voice_forbidden:
            raise ApiError(400, "Bad Request: VOICE_MESSAGES_FORBIDDEN")
        if len(upload.data) > 50 * 1024 * 1024:
            raise ApiError(400, "Bad Request: file is too big")
        voice = {"file_id": f"voice-{next(self._ids)}", "file_unique_id": "u", "mime_type": "audio/ogg",
                 "duration": int(params.get("duration") or 0), "file_size": len(upload.data)}
        return self._message(bot, params, voice=voice)

    def _api_getFile(self, bot: FakeBot, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        file_id = str(params.get("file_id", ""))
        if file_id not in self.files:
            raise ApiError(400, "Bad Request: invalid file_id")
        file_path, _, size = self.files[file_id]
        if size > DOWNLOAD_LIMIT:
            raise ApiError(400, "Bad Request: file is too big")
        return {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": size, "file_path": file_path}

    def _api_setWebhook(self, bot: FakeBot, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        secret = params.get("secret_token")
        if secret is not None and (len(str(secret)) > 256 or not all(c.isalnum() or c in "_-" for c in str(secret))):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        if not params.get("url"):
            bot.webhook = {}
            return True
        previous = bot.webhook.get("allowed_updates")
        bot.webhook = {"url": params["url"], "secret_token": secret,
                       "allowed_updates": params.get("allowed_updates", previous),
                       "max_connections": params.get("max_connections", 40)}
        if params.get("drop_pending_updates"):
            bot.pending_update_count = 0
        return True

    def _api_deleteWebhook(self, bot: FakeBot, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        bot.webhook = {}
        if params.get("drop_pending_updates"):
            with self._lock:
                bot.updates.clear()
        return True

    async def _get_updates(self, bot: FakeBot, params: dict[str, Any]) -> list[dict[str, Any]]:
        """getUpdates: confirm below ``offset``, then answer what is pending or wait for it."""
        if bot.webhook.get("url"):
            raise ApiError(409, _WEBHOOK_CONFLICT)
        offset, timeout = params.get("offset"), float(params.get("timeout") or 0)
        limit = int(params.get("limit") or 100)
        with self._lock:
            bot.poll_generation += 1
            generation = bot.poll_generation
            if isinstance(offset, int):
                bot.updates = [u for u in bot.updates if u["update_id"] >= offset]
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if bot.poll_generation != generation:
                    raise ApiError(409, _POLL_CONFLICT)
                if bot.updates:
                    batch = list(bot.updates[:limit])
                    bot.fetched.extend(u["update_id"] for u in batch)
                    return batch
            if time.monotonic() >= deadline:
                return []
            await asyncio.sleep(0.02)

    def _api_getWebhookInfo(self, bot: FakeBot, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        info: dict[str, Any] = {"url": bot.webhook.get("url", ""), "has_custom_certificate": False,
                                "pending_update_count": bot.pending_update_count}
        if bot.webhook:
            info["max_connections"] = bot.webhook["max_connections"]
            if bot.webhook.get("allowed_updates") is not None:
                info["allowed_updates"] = bot.webhook["allowed_updates"]
        if bot.last_error_message:
            info["last_error_date"] = int(time.time()) - 60
            info["last_error_message"] = bot.last_error_message
        return info

    def _api_answerCallbackQuery(self, bot: FakeBot, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        return True


def _error(exc: ApiError) -> JSONResponse:
    body: dict[str, Any] = {"ok": False, "error_code": exc.code, "description": exc.description}
    headers = {}
    if exc.parameters:
        body["parameters"] = exc.parameters
        if "retry_after" in exc.parameters:
            headers["Retry-After"] = str(exc.parameters["retry_after"])
    return JSONResponse(body, status_code=exc.code, headers=headers)


async def _read_params(request: Request) -> tuple[dict[str, Any], dict[str, Upload]]:
    """Query string, JSON body, or form/multipart fields with JSON-encoded values (PTB's way)."""
    params: dict[str, Any] = {}
    files: dict[str, Upload] = {}
    raw: dict[str, Any] = dict(request.query_params)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        body = await request.body()
        params.update(json.loads(body) if body else {})
    elif request.method == "POST":
        form = await request.form()
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files[key] = Upload(value.filename or key, value.content_type or "", await value.read())
            else:
                raw[key] = value
    for key, value in raw.items():
        params[key] = value if key in _TEXT_FIELDS else _maybe_json(value)
    for key, value in list(params.items()):  # PTB may attach a file by "attach://<name>"
        if isinstance(value, str) and value.startswith("attach://") and value[9:] in files:
            files[key] = files.pop(value[9:])
    return params, files


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _upload(files: dict[str, Upload], params: dict[str, Any], field_name: str) -> Upload:
    if field_name in files:
        return files[field_name]
    if isinstance(params.get(field_name), str):  # a file_id or URL instead of bytes
        return Upload(params[field_name], "", b"")
    raise ApiError(400, f"Bad Request: there is no {field_name} in the request")


class _TelegramHTML(HTMLParser):
    """Telegram's HTML rules (docs/PLATFORMS.md §1.5): listed tags only, balanced, ``< > &`` escaped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _ALLOWED_TAGS:
            raise ApiError(400, f'Bad Request: can\'t parse entities: Unsupported start tag "{tag}"')
        if tag == "a" and not dict(attrs).get("href"):
            raise ApiError(400, "Bad Request: can't parse entities: a tag without href")
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            raise ApiError(400, f'Bad Request: can\'t parse entities: Can\'t find end tag corresponding to start tag "{tag}"')
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if any(char in data for char in "<>&"):
            raise ApiError(400, "Bad Request: can't parse entities: unescaped character in text")
        self.text.append(data)

    def handle_entityref(self, name: str) -> None:
        if name not in _ENTITIES:
            raise ApiError(400, f'Bad Request: can\'t parse entities: Unsupported HTML entity "&{name};"')
        self.text.append(_ENTITIES[name])

    def handle_charref(self, name: str) -> None:
        self.text.append(chr(int(name[1:], 16) if name.lower().startswith("x") else int(name)))


def telegram_html_text(text: str) -> str:
    """The text Telegram would show for ``text`` in parse_mode HTML; ApiError (400) if refused."""
    parser = _TelegramHTML()
    parser.feed(text)
    parser.close()
    if parser.stack:
        raise ApiError(400, f"Bad Request: can't parse entities: unclosed tag \"{parser.stack[-1]}\"")
    return "".join(parser.text)


def message_update(update_id: int, *, chat_id: int, user_id: int, text: str | None = None,
                   chat_type: str = "private", **fields: Any) -> dict[str, Any]:
    """A webhook ``Update`` with a message, for end-to-end tests (extra fields go on the message)."""
    chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
    if chat_type != "private":
        chat["title"] = "Test group"
    message: dict[str, Any] = {"message_id": update_id, "date": int(time.time()), "chat": chat,
                               "from": {"id": user_id, "is_bot": False, "first_name": f"User{user_id}"}}
    if text is not None:
        message["text"] = text
        entities = _entities(text)
        if entities:
            message["entities"] = entities
    message.update(fields)
    return {"update_id": update_id, "message": message}


def _entities(text: str) -> list[dict[str, Any]]:
    """bot_command and mention entities like Telegram adds them (offsets in UTF-16 units)."""
    def u16(part: str) -> int:
        return len(part.encode("utf-16-le")) // 2

    found: list[dict[str, Any]] = []
    for match in re.finditer(r"(?:^/\w+(?:@\w+)?)|(?:@\w{5,})", text):
        kind = "bot_command" if match.group().startswith("/") else "mention"
        found.append({"type": kind, "offset": u16(text[: match.start()]), "length": u16(match.group())})
    return found


@pytest.fixture
def fake_telegram() -> Iterator[FakeTelegram]:
    """A running fake Bot API server, stopped after the test."""
    with FakeTelegram() as fake:
        yield fake
