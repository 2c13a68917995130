"""A local fake of the Slack Web API that speaks the real protocol (docs/PLATFORMS.md §2.6, §2.7, §4).

``FakeSlack`` serves ``/api/<method>`` on 127.0.0.1 (uvicorn in a background thread, so sync tests,
async tests and a gateway worker can all use it) with the Bearer token in ``Authorization``
and parameters in the query string, a form body or a JSON body, as slack_sdk sends them. It
answers ``{"ok": true, ...}``, logical errors as **HTTP 200** ``{"ok": false, "error": code}``,
and rate limits as HTTP 429 + ``Retry-After`` + ``{"ok": false, "error": "ratelimited"}``.
It also serves the file upload URLs, private file downloads (Slack's HTML sign-in page for a
wrong token) and an auto-approving ``/oauth/v2/authorize``. ``oauth.v2.access`` exchanges codes
(bot token, a user token when ``user_scope`` was asked, org-wide installs) and, with
``token_expires_in`` set, issues rotating tokens that expire (``token_expired``) and refresh
(``grant_type=refresh_token``: a new pair, the old refresh token spent). Every call is recorded,
with the client's address (one address: one reused connection)::

    with FakeSlack(client_id="cid", client_secret="csecret") as slack:
        ws = slack.add_workspace("T1")                     # token, bot user id and bot id
        slack.rate_limit_next("chat.postMessage", retry_after=2)
        slack.fail_next("chat.postMessage", "channel_not_found")
        slack.add_workspace("E1", org_wide=True)           # an Enterprise Grid org-wide install
        slack.token_expires_in = 600                       # OAuth installs get rotating tokens
        slack.hang("auth.test")                            # no answer until the fake stops
        slack.status_refusal = "missing_scope"             # every setStatus answers this error
        ...
        assert [m.text for m in slack.messages(channel="C1")] == [...]

The assistant methods record what they set: ``statuses[(channel, thread_ts)]`` (the thread's status
now; a post in the thread clears it, as Slack does, and ``status_history`` keeps every one set),
``suggested_prompts[(channel, thread_ts)]`` and ``titles[(channel, thread_ts)]``.

Point slack_sdk at it with ``base_url=slack.api_url + "/"`` (``api_base_url: slack.api_url``
in a channel config).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qsl, urlencode

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from tests.support.servers import ServedApp

if TYPE_CHECKING:
    from tests.fakes.slack_socket import SlackSocketFake

__all__ = [
    "Call",
    "FakeSlack",
    "FileShare",
    "Message",
    "Workspace",
    "event_envelope",
    "fake_slack",
    "signed_headers",
]

LOGIN_PAGE = "<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to Slack</body></html>"


@dataclass(frozen=True)
class Workspace:
    """One installation the fake knows: its bot token and who the bot is there."""

    team_id: str
    token: str
    user_id: str
    bot_id: str
    team_name: str
    enterprise_id: str | None = None
    #: An Enterprise Grid org-wide installation: ``team_id`` is the enterprise id, and
    #: oauth.v2.access answers ``team: null`` with ``is_enterprise_install: true`` (docs/PLATFORMS.md §2.7).
    org_wide: bool = False


@dataclass(frozen=True)
class Call:
    """One request as the fake received it; ``status``/``error`` are what it answered."""

    method: str
    token: str | None
    params: dict[str, Any]
    status: int = 200
    error: str | None = None
    at: float = 0.0
    #: The client's ``host:port``: one value across calls means one reused TCP connection.
    peer: str = ""


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    thread_ts: str | None
    team_id: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FileShare:
    """A file shared by files.completeUploadExternal."""

    file_id: str
    title: str
    filename: str
    data: bytes
    channel: str | None
    thread_ts: str | None
    team_id: str


@dataclass
class _Failure:
    method: str
    error: str
    status: int
    retry_after: int | None
    times: int


class _ApiError(Exception):
    def __init__(self, error: str, status: int = 200, retry_after: int | None = None) -> None:
        super().__init__(error)
        self.error, self.status, self.retry_after = error, status, retry_after


class FakeSlack(ServedApp):
    """The fake Slack server and its knobs; use as a (sync or async) context manager."""

    def __init__(self, *, client_id: str = "fake-client-id", client_secret: str = "fake-client-secret") -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.workspaces: dict[str, Workspace] = {}  # token → workspace
        self.revoked: set[str] = set()
        self.reactions: dict[tuple[str, str], list[str]] = {}  # (channel, ts) → names
        self.shared_files: list[FileShare] = []
        #: Assistant threads: the status shown now, every status set, the prompts and the title.
        self.statuses: dict[tuple[str, str], str] = {}
        self.status_history: list[tuple[str, str, str]] = []  # (channel, thread_ts, status)
        self.suggested_prompts: dict[tuple[str, str], dict[str, Any]] = {}
        self.titles: dict[tuple[str, str], str] = {}
        #: When set, every assistant.threads.setStatus answers this error (a token without the
        #: scope: ``missing_scope``; a token type Slack does not allow: ``not_allowed_token_type``).
        self.status_refusal: str | None = None
        #: The team the next /oauth/v2/authorize approves (the admin "picks a workspace").
        self.next_install_team: str | None = None
        #: The Socket Mode server apps.connections.open hands out URLs of (tests/fakes/slack_socket.py).
        self.socket_mode: SlackSocketFake | None = None
        self._messages: list[Message] = []
        self._calls: list[Call] = []
        self._failures: list[_Failure] = []
        self._codes: dict[str, tuple[str, str, str]] = {}  # code → (team_id, redirect_uri, user_scope)
        self._uploads: dict[str, dict[str, Any]] = {}  # file_id → filename, length, data, team
        self._files: dict[str, tuple[str, bytes, str]] = {}  # path → (team_id, data, mimetype)
        self._ids = itertools.count(1)
        #: With a number, code grants return rotating tokens (``xoxe.xoxb-``) that expire after this
        #: many seconds, with a refresh token; refresh grants use ``refresh_expires_in`` (docs/PLATFORMS.md §2.7).
        self.token_expires_in: int | None = None
        self.refresh_expires_in = 43_200
        self._expires: dict[str, float] = {}  # access token → expiry (epoch seconds)
        self._refresh_tokens: dict[str, str] = {}  # unspent refresh token → access token it renews
        self._hung: set[str] = set()
        self._slow: dict[str, float] = {}
        self._release = threading.Event()
        self._clock = itertools.count(1)
        self._lock = threading.Lock()
        self.url = ""

    @property
    def api_url(self) -> str:
        """What a channel's ``api_base_url`` should be (slack_sdk appends ``/<method>``)."""
        return f"{self.url}/api"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        super().start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def stop(self) -> None:
        self._release.set()  # hung requests answer, so the server can shut down
        super().stop()


    # -- knobs ----------------------------------------------------------------------------------

    def add_workspace(
        self,
        team_id: str,
        *,
        token: str | None = None,
        user_id: str | None = None,
        bot_id: str | None = None,
        team_name: str | None = None,
        enterprise_id: str | None = None,
        org_wide: bool = False,
    ) -> Workspace:
        """A workspace with the app installed; its bot token works from now on. ``org_wide``:
        an Enterprise Grid organisation (``team_id`` is then its enterprise id)."""
        ws = Workspace(
            team_id=team_id,
            token=token or f"xoxb-{team_id}-{next(self._ids)}",
            user_id=user_id or f"U{team_id}BOT",
            bot_id=bot_id or f"B{team_id}BOT",
            team_name=team_name or (f"Org {team_id}" if org_wide else f"Team {team_id}"),
            enterprise_id=team_id if org_wide else enterprise_id,
            org_wide=org_wide,
        )
        with self._lock:
            self.workspaces[ws.token] = ws
        return ws

    def hang(self, method: str) -> None:
        """Calls of ``method`` get no answer until the fake stops (Slack hanging, issue 10)."""
        with self._lock:
            self._hung.add(method)

    def slow(self, method: str, seconds: float) -> None:
        """Calls of ``method`` answer after ``seconds`` (to make two callers overlap)."""
        with self._lock:
            self._slow[method] = seconds

    def expire(self, token: str) -> None:
        """``token`` answers ``token_expired`` from now on, as a rotating token past its 12 h."""
        with self._lock:
            self._expires[token] = 0.0

    def refresh_grants(self) -> list[Call]:
        """The ``oauth.v2.access`` calls that refreshed a token."""
        return [c for c in self.calls("oauth.v2.access") if c.params.get("grant_type") == "refresh_token"]

    def revoke(self, token: str) -> None:
        """Calls with ``token`` now answer ``token_revoked`` (an uninstalled app)."""
        with self._lock:
            self.revoked.add(token)

    def fail_next(self, method: str, error: str, *, times: int = 1, status: int = 200) -> None:
        """The next ``times`` calls of ``method`` answer ``{"ok": false, "error": error}``."""
        with self._lock:
            self._failures.append(_Failure(method, error, status, None, times))

    def rate_limit_next(self, method: str, *, retry_after: int = 1, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` answer 429 + ``Retry-After`` (docs/PLATFORMS.md §2.6)."""
        with self._lock:
            self._failures.append(_Failure(method, "ratelimited", 429, retry_after, times))

    def add_oauth_code(self, code: str, team_id: str, *, redirect_uri: str = "", user_scope: str = "") -> None:
        """A code oauth.v2.access will exchange for ``team_id``'s bot token (one use), and a user
        token of the installer when user scopes were asked."""
        with self._lock:
            self._codes[code] = (team_id, redirect_uri, user_scope)

    def add_file(self, team_id: str, name: str, data: bytes, *, mimetype: str = "application/octet-stream",
                 **fields: Any) -> dict[str, Any]:
        """A file a user shared; returns the ``files[]`` item of a ``file_share`` message (with
        ``fields`` on it: an audio clip's ``subtype: slack_audio``, ``duration_ms``…)."""
        file_id = f"F{next(self._ids):06d}"
        path = f"/files-pri/{team_id}-{file_id}/download/{name}"
        with self._lock:
            self._files[path] = (team_id, data, mimetype)
        return {
            "id": file_id,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "size": len(data),
            "mode": "hosted",
            "is_external": False,
            "url_private": f"{self.url}/files-pri/{team_id}-{file_id}/{name}",
            "url_private_download": f"{self.url}{path}",
            **fields,
        }

    # -- what happened --------------------------------------------------------------------------

    def calls(self, method: str | None = None, *, token: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if method in (None, c.method) and token in (None, c.token)]

    def messages(self, *, channel: str | None = None, team_id: str | None = None) -> list[Message]:
        """Messages posted successfully, oldest first."""
        with self._lock:
            return [m for m in self._messages if channel in (None, m.channel) and team_id in (None, m.team_id)]

    def texts(self, *, channel: str | None = None, team_id: str | None = None) -> list[str]:
        return [m.text for m in self.messages(channel=channel, team_id=team_id)]

    # -- the server -----------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/{method}", self._api_endpoint, methods=["GET", "POST"]),
                Route("/upload/v1/{file_id}", self._upload_endpoint, methods=["POST"]),
                Route("/files-pri/{path:path}", self._file_endpoint, methods=["GET"]),
                Route("/oauth/v2/authorize", self._authorize_endpoint, methods=["GET"]),
            ]
        )

    async def _api_endpoint(self, request: Request) -> Response:
        method = request.path_params["method"]
        params = await _read_params(request)
        token = _bearer(request) or params.pop("token", None)
        peer = f"{request.client.host}:{request.client.port}" if request.client else ""
        with self._lock:
            hung, delay = method in self._hung, self._slow.get(method, 0.0)
        while hung and not self._release.is_set():
            await asyncio.sleep(0.05)
        if delay:
            await asyncio.sleep(delay)
        try:
            self._injected_failure(method)
            handler = getattr(self, "_api_" + method.replace(".", "_"), None)
            if handler is None:
                raise _ApiError("unknown_method")
            if method == "oauth.v2.access":
                result = handler(request, params)
            elif method == "apps.connections.open":
                result = handler(token, params)  # the app-level token, not a workspace's
            else:
                result = handler(self._authed(token), params)
        except _ApiError as exc:
            self._record(Call(method, token, params, exc.status, exc.error, time.time(), peer))
            headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
            return JSONResponse({"ok": False, "error": exc.error}, status_code=exc.status, headers=headers)
        self._record(Call(method, token, params, 200, None, time.time(), peer))
        return JSONResponse({"ok": True, **result})

    def _record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    def _injected_failure(self, method: str) -> None:
        with self._lock:
            for failure in self._failures:
                if failure.method == method and failure.times > 0:
                    failure.times -= 1
                    raise _ApiError(failure.error, failure.status, failure.retry_after)

    def _authed(self, token: str | None) -> Workspace:
        if not token:
            raise _ApiError("not_authed")
        if token in self.revoked:
            raise _ApiError("token_revoked")
        ws = self.workspaces.get(token)
        if ws is None:
            raise _ApiError("invalid_auth")
        if token in self._expires and self._expires[token] <= time.time():
            raise _ApiError("token_expired")
        return ws

    def _ts(self) -> str:
        return f"{int(time.time())}.{next(self._clock):06d}"

    # -- methods --------------------------------------------------------------------------------

    def _api_auth_test(self, ws: Workspace, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": f"https://{ws.team_id.lower()}.slack.com/",
            "team": ws.team_name,
            "user": "bot",
            "team_id": ws.team_id,
            "user_id": ws.user_id,
            "bot_id": ws.bot_id,
            **({"enterprise_id": ws.enterprise_id} if ws.enterprise_id else {}),
            "is_enterprise_install": ws.org_wide,
        }

    def _api_chat_postMessage(self, ws: Workspace, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        text = params.get("text")
        if not channel:
            raise _ApiError("channel_not_found")
        if not text and not params.get("blocks") and not params.get("attachments"):
            raise _ApiError("no_text")
        if text and len(str(text)) > 40_000:
            raise _ApiError("msg_too_long")
        ts = self._ts()
        thread_ts = params.get("thread_ts") or None
        with self._lock:
            self._messages.append(Message(channel, ts, str(text or ""), thread_ts, ws.team_id, dict(params)))
            if thread_ts and self.statuses.get((channel, thread_ts)):
                self.statuses[(channel, thread_ts)] = ""  # "automatically cleared when the app sends a reply"
        message = {"type": "message", "text": text or "", "user": ws.user_id, "bot_id": ws.bot_id, "ts": ts, "team": ws.team_id}
        if thread_ts:
            message["thread_ts"] = thread_ts
        return {"channel": channel, "ts": ts, "message": message}

    def _assistant_thread(self, params: dict[str, Any]) -> tuple[str, str]:
        channel, thread_ts = params.get("channel_id"), params.get("thread_ts")
        if not channel:
            raise _ApiError("channel_not_found")
        if not thread_ts:
            raise _ApiError("invalid_thread_ts")
        return str(channel), str(thread_ts)

    def _api_assistant_threads_setStatus(self, ws: Workspace, params: dict[str, Any]) -> dict[str, Any]:
        """The thread's status; "" clears it (§ assistant.threads.setStatus)."""
        if self.status_refusal:
            raise _ApiError(self.status_refusal)
        thread = self._assistant_thread(params)
        if "status" not in params:
            raise _ApiError("invalid_arguments")
        status = str(params["status"])
        with self._lock:
            self.statuses[thread] = status
            self.status_history.append((*thread, status))
        return {}

    def _api_assistant_threads_setSuggestedPrompts(self, ws: Workspace, params: dict[str, Any]) -> dict[str, Any]:
        thread = self._assistant_thread(params)
        prompts = params.get("prompts")
        if isinstance(prompts, str):
            prompts = json.loads(prompts)
        if (not isinstance(prompts, list) or not 1 <= len(prompts) <= 4
                or not all(isinstance(p, dict) and p.get("title") and p.get("message") for p in prompts)):
            raise _ApiError("invalid_arguments")
        with self._lock:
            self.suggested_prompts[thread] = {"prompts": prompts, **({"title": params["title"]} if params.get("title") else {})}
        return {}

    def _api_assistant_threads_setTitle(self, ws: Workspace, params: dict[str, Any]) -> dict[str, Any]:
        thread = self._assistant_thread(params)
        if not params.get("title"):
            raise _ApiError("invalid_arguments")
        with self._lock:
            self.titles[thread] = str(params["title"])
        return {}

    def _api_apps_connections_open(self, token: str | None, params: dict[str, Any]) -> dict[str, Any]:
        """A one-use Socket Mode URL; only the app-level ``xapp-`` token may ask."""
        if not token:
            raise _ApiError("not_authed")
        if not token.startswith("xapp-"):
            raise _ApiError("not_allowed_token_type")
        url = self.socket_mode.open_url(token) if self.socket_mode is not None else None
        if url is None:
            raise _ApiError("invalid_auth")
        return {"url": url}

    def _api_chat_update(self, ws: Workspace, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel") or ""), str(params.get("ts") or "")
        with self._lock:
            for message in self._messages:
                if message.channel == channel and message.ts == ts:
                    message.text = str(params.get("text") or "")
                    return {"channel": channel, "ts": ts, "text": message.text}
        raise _ApiError("message_not_found")

    def _api_reactions_add(self, ws: Workspace, params: dict[str, Any]) -> dict[str, Any]:
        key, name = (str(params.get("channel")), str(params.get("timestamp"))), str(params.get("name"))
        with self._lock:
            names = self.reactions.setdefault(key, [])
            if name in names:
                raise _ApiError("already_reacted")
            names.append(name)
        return {}

    def _api_reactions_remove(self, ws: Workspace, params: dict[str, Any]) -> dict[str, Any]:
        key, name = (str(params.get("channel")), str(params.get("timestamp"))), str(params.get("name"))
        with self._lock:
            names = self.reactions.get(key, [])
            if name not in names:
                raise _ApiError("no_reaction")
            names.remove(name)
        return {}

    def _api_files_getUploadURLExternal(self, ws: Workspace, params: dict[str, Any]) -> dict[str, Any]:
        filename, length = params.get("filename"), params.get("length")
        if not filename or length in (None, ""):
            raise _ApiError("invalid_arguments")
        file_id = f"F{next(self._ids):06d}"
        with self._lock:
            self._uploads[file_id] = {"filename": str(filename), "length": int(length), "data": None, "team": ws.team_id}
        return {"upload_url": f"{self.url}/upload/v1/{file_id}", "file_id": file_id}

    def _api_files_completeUploadExternal(self, ws: Workspace, params: dict[str, Any]) -> dict[str, Any]:
        files = params.get("files")
        items = json.loads(files) if isinstance(files, str) else files
        if not isinstance(items, list) or not items:
            raise _ApiError("invalid_arguments")
        done = []
        with self._lock:
            for item in items:
                upload = self._uploads.get(str(item.get("id")))
                if upload is None or upload["data"] is None or upload["team"] != ws.team_id:
                    raise _ApiError("file_not_found")
                share = FileShare(
                    file_id=str(item["id"]),
                    title=str(item.get("title") or upload["filename"]),
                    filename=upload["filename"],
                    data=upload["data"],
                    channel=params.get("channel_id") or None,
                    thread_ts=params.get("thread_ts") or None,
                    team_id=ws.team_id,
                )
                self.shared_files.append(share)
                done.append({"id": share.file_id, "title": share.title, "name": share.filename, "size": len(share.data)})
        return {"files": done}

    def _api_oauth_v2_access(self, request: Request, params: dict[str, Any]) -> dict[str, Any]:
        client_id, client_secret = _basic_auth(request) or (params.get("client_id"), params.get("client_secret"))
        if client_id != self.client_id:
            raise _ApiError("invalid_client_id")
        if client_secret != self.client_secret:
            raise _ApiError("bad_client_secret")
        if params.get("grant_type") == "refresh_token":
            return self._refresh(str(params.get("refresh_token") or ""))
        with self._lock:
            granted = self._codes.pop(str(params.get("code") or ""), None)
        if granted is None:
            raise _ApiError("invalid_code")
        team_id, redirect_uri, user_scope = granted
        if redirect_uri and params.get("redirect_uri") != redirect_uri:
            raise _ApiError("bad_redirect_uri")
        ws = next((w for w in self.workspaces.values() if w.team_id == team_id), None) or self.add_workspace(team_id)
        if self.token_expires_in is not None:
            ws = self._rotating_token(ws, self.token_expires_in)
        enterprise = {"name": f"Org {ws.enterprise_id}", "id": ws.enterprise_id} if ws.enterprise_id else None
        installer: dict[str, Any] = {"id": "UINSTALLER"}
        if user_scope:
            user_token = f"xoxp-{ws.team_id}-{next(self._ids)}"
            with self._lock:
                self.workspaces[user_token] = ws
            installer.update({"scope": user_scope, "access_token": user_token, "token_type": "user"})
        # The shape of OAUTH_V2_ACCESS_RESPONSE in bolt's mock server (docs/PLATFORMS.md §2.7): no bot_id here.
        answer = {
            "access_token": ws.token,
            "token_type": "bot",
            "scope": "chat:write,commands",
            "bot_user_id": ws.user_id,
            "app_id": "AFAKEAPP",
            "team": None if ws.org_wide else {"name": ws.team_name, "id": ws.team_id},
            "enterprise": enterprise,
            "is_enterprise_install": ws.org_wide,
            "authed_user": installer,
        }
        return {**answer, **self._rotation_fields(ws.token)}

    def _rotating_token(self, ws: Workspace, expires_in: int) -> Workspace:
        """A new rotating access token for ``ws`` with its refresh token; the old token keeps
        working until it expires, as Slack's do."""
        fresh = replace(ws, token=f"xoxe.xoxb-{ws.team_id}-{next(self._ids)}")
        with self._lock:
            self.workspaces[fresh.token] = fresh
            self._expires[fresh.token] = time.time() + expires_in
            self._refresh_tokens[f"xoxe-1-{next(self._ids)}"] = fresh.token
        return fresh

    def _rotation_fields(self, token: str) -> dict[str, Any]:
        with self._lock:
            expiry = self._expires.get(token)
            refresh = next((r for r, t in self._refresh_tokens.items() if t == token), None)
        if expiry is None or refresh is None:
            return {}
        return {"refresh_token": refresh, "expires_in": max(0, int(expiry - time.time()))}

    def _refresh(self, refresh_token: str) -> dict[str, Any]:
        """``grant_type=refresh_token``: a new token pair; the refresh token is spent."""
        with self._lock:
            old = self._refresh_tokens.pop(refresh_token, None)
            ws = self.workspaces.get(old or "")
        if ws is None:
            raise _ApiError("invalid_refresh_token")
        fresh = self._rotating_token(ws, self.refresh_expires_in)
        return {
            "access_token": fresh.token,
            "token_type": "bot",
            "scope": "chat:write,commands",
            "bot_user_id": fresh.user_id,
            "app_id": "AFAKEAPP",
            "team": None if fresh.org_wide else {"name": fresh.team_name, "id": fresh.team_id},
            "enterprise": {"id": fresh.enterprise_id} if fresh.enterprise_id else None,
            "is_enterprise_install": fresh.org_wide,
            **self._rotation_fields(fresh.token),
        }

    # -- non-API endpoints ----------------------------------------------------------------------

    async def _upload_endpoint(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        data = await request.body()
        with self._lock:
            upload = self._uploads.get(file_id)
            if upload is None:
                return PlainTextResponse("file not found", status_code=404)
            upload["data"] = data
        self._record(Call("upload", None, {"file_id": file_id, "bytes": len(data)}, 200, None, time.time()))
        return PlainTextResponse(f"OK - {len(data)}")

    async def _file_endpoint(self, request: Request) -> Response:
        path = request.url.path
        token = _bearer(request)
        with self._lock:
            found = self._files.get(path)
            ws = self.workspaces.get(token or "")
        self._record(Call("download", token, {"path": path}, 200, None, time.time()))
        if found is None:
            return PlainTextResponse("not found", status_code=404)
        team_id, data, mimetype = found
        if ws is None or ws.team_id != team_id or token in self.revoked:
            # What Slack does for a missing or wrong token: 200 and its sign-in page (docs/PLATFORMS.md §2.5).
            return HTMLResponse(LOGIN_PAGE)
        return Response(data, media_type=mimetype)

    async def _authorize_endpoint(self, request: Request) -> Response:
        """Slack's consent page, approved at once for ``next_install_team``."""
        query = request.query_params
        if query.get("client_id") != self.client_id or not self.next_install_team:
            return HTMLResponse("<p>invalid client_id or no workspace chosen</p>", status_code=400)
        code = f"code-{next(self._ids)}"
        redirect_uri = query.get("redirect_uri", "")
        self.add_oauth_code(code, self.next_install_team, redirect_uri=redirect_uri, user_scope=query.get("user_scope", ""))
        self._record(Call("oauth.authorize", None, dict(query), 302, None, time.time()))
        return RedirectResponse(f"{redirect_uri}?{urlencode({'code': code, 'state': query.get('state', '')})}", status_code=302)


async def _read_params(request: Request) -> dict[str, Any]:
    """Query string plus a JSON or form body: slack_sdk sends chat.postMessage as JSON and most
    other methods as query parameters or form fields (docs/PLATFORMS.md §2.6)."""
    params: dict[str, Any] = dict(request.query_params)
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    if body and content_type.startswith("application/json"):
        params.update(json.loads(body))
    elif body:
        params.update(parse_qsl(body.decode(), keep_blank_values=True))
    return params


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    return value[7:].strip() if value.lower().startswith("bearer ") else None


def _basic_auth(request: Request) -> tuple[str, str] | None:
    value = request.headers.get("authorization", "")
    if not value.lower().startswith("basic "):
        return None
    user, _, password = base64.b64decode(value[6:]).decode().partition(":")
    return user, password


# -- delivering events to the gateway, the way Slack does (docs/PLATFORMS.md §2.1, §2.4) -----------------------------


def signed_headers(secret: str, body: bytes, *, timestamp: int | None = None, retry_num: int | None = None) -> dict[str, str]:
    """Headers of one Events API delivery: a fresh timestamp and ``v0=`` HMAC-SHA256 each
    attempt; redeliveries add ``X-Slack-Retry-Num`` and ``X-Slack-Retry-Reason``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    headers = {"content-type": "application/json", "x-slack-request-timestamp": ts, "x-slack-signature": f"v0={digest}"}
    if retry_num:
        headers["x-slack-retry-num"] = str(retry_num)
        headers["x-slack-retry-reason"] = "http_timeout"
    return headers


def event_envelope(
    event: dict[str, Any],
    *,
    team_id: str,
    event_id: str,
    bot_user_id: str = "",
    enterprise_id: str | None = None,
    org_wide: bool = False,
) -> dict[str, Any]:
    """An ``event_callback`` envelope around ``event`` (docs/PLATFORMS.md §2.3); ``org_wide``: received by an
    Enterprise Grid org-wide installation, whose authorization names no team."""
    authorization = {
        "enterprise_id": enterprise_id,
        "team_id": None if org_wide else team_id,
        "user_id": bot_user_id,
        "is_bot": True,
        "is_enterprise_install": org_wide,
    }
    return {
        "token": "deprecated-verification-token",
        "team_id": team_id,
        **({"enterprise_id": enterprise_id} if enterprise_id else {}),
        "api_app_id": "AFAKEAPP",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "authorizations": [authorization],
        "is_ext_shared_channel": False,
        "event_context": f"4-{event_id}",
    }


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    """A running fake Slack Web API, stopped after the test."""
    with FakeSlack() as fake:
        yield fake
