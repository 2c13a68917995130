"""Starlette routes of the OCS simulator (§ = docs/OCS.md).

All paths are relative, so the app works as-is or under ``Mount("/sim", app)``. Trailing
slashes are exact (§1): Starlette's slash redirects are switched off, and a non-UUID
session id simply does not route (plain-text 404, like Django).
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, NoReturn
from urllib.parse import unquote_plus, urlsplit

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from gateway.ocs.simulator.control import control_routes
from gateway.ocs.simulator.edge import mark_for_drop, through_edge
from gateway.ocs.simulator.state import (
    ALL_SCOPES,
    RateInfo,
    SimChatbot,
    SimSession,
    SimulatorState,
    format_timestamp,
)

Handler = Callable[[Request], Awaitable[Response]]

__all__ = ["create_simulator_app"]

DENIED_CHAT = {"error": "Authentication required to chat with this chatbot", "code": "chat_access_denied"}
NOT_PROVIDED = {"detail": "Authentication credentials were not provided."}
NO_PERMISSION = {"detail": "You do not have permission to perform this action."}
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="api"'}
WAF_BLOCK = "<html><head><title>403 Forbidden</title></head><body><center><h1>403 Forbidden</h1></center></body></html>"
# §3.3 upload rules.
ALLOWED_EXTENSIONS = [
    ".txt", ".pdf", ".doc", ".docx", ".xls", ".xlsx", ".csv", ".jpg", ".jpeg", ".png", ".gif", ".webp", ".mp4", ".mov",
    ".avi", ".mp3", ".wav", ".html", ".htm", ".css", ".js", ".xml", ".md", ".ics", ".vcf", ".rtf", ".tsv", ".yaml",
    ".yml", ".py", ".c",
]
DENIED_EXTENSIONS = {".svg", ".svgz", ".bmp", ".tif", ".tiff"}
SUPPORTED_IMAGES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/heic", "image/heif"}
MAGIC = [(b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
         (b"%PDF-", "application/pdf"), (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff")]


class _Reject(Exception):
    """Short-circuits a handler with a finished response."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _reject(status: int, body: Any, headers: dict[str, str] | None = None) -> NoReturn:
    raise _Reject(JSONResponse(body, status_code=status, headers=headers))


def _rate_headers(rate: RateInfo) -> dict[str, str]:
    return {"X-RateLimit-Limit": str(rate.limit), "X-RateLimit-Remaining": str(rate.remaining),
            "X-RateLimit-Reset": str(rate.reset_s)}


def _too_many(available_in: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """§3.1 refusal shape."""
    return JSONResponse({"detail": "Rate limit exceeded.", "available_in": available_in}, status_code=429,
                        headers={**(headers or {}), "Retry-After": str(available_in)})


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _origin_host(request: Request) -> str | None:
    raw = request.headers.get("origin") or request.headers.get("referer")
    return urlsplit(raw).hostname if raw else None


def _domain_allowed(host: str | None, allowed: list[str]) -> bool:
    if host is None:
        return False
    return any(d == "*" or d == host or (d.startswith("*.") and host.endswith(d[1:])) for d in allowed)


def _string_field_errors(body: dict[str, Any], names: tuple[str, ...]) -> dict[str, list[str]]:
    """DRF CharField rules for optional strings (§4.1: omit them, never send "")."""
    errors: dict[str, list[str]] = {}
    for name in (n for n in names if n in body):
        value = body[name]
        if value is None:
            errors[name] = ["This field may not be null."]
        elif not isinstance(value, (str, int, float)) or isinstance(value, bool):
            errors[name] = ["Not a valid string."]
        elif not str(value).strip():
            errors[name] = ["This field may not be blank."]
    return errors


def _sniff(data: bytes) -> str | None:
    for magic, content_type in MAGIC:
        if data.startswith(magic):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:2] == b"BM" and data[6:10] == b"\x00\x00\x00\x00":
        return "image/bmp"
    return None


def _upload_error(name: str, part_type: str, data: bytes, max_mb: float) -> str | None:
    """§3.3/§4.5 per-file checks, in OCS order: size, extension/text rule, image sniffing."""
    if len(data) > max_mb * 1024 * 1024:
        return f"File '{name}' exceeds maximum size of {max_mb:g}MB"
    ext = os.path.splitext(name)[1].lower()
    if ext in DENIED_EXTENSIONS or (ext not in ALLOWED_EXTENSIONS and not part_type.startswith("text/")):
        return f"File type '{ext}' is not supported. Allowed types: {', '.join(ALLOWED_EXTENSIONS)}"
    sniffed = _sniff(data)
    if sniffed and sniffed.startswith("image/") and sniffed not in SUPPORTED_IMAGES:
        return (f"The image `{name}` is not a supported image type. "
                "Supported types: GIF, HEIC, HEIF, JPEG, PNG, WEBP.")
    return None


def _parse_since(raw: str) -> datetime:
    """§4.4/§6.3: ``fromisoformat`` after ``Z`` -> ``+00:00``; naive means UTC."""
    value = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith("Z") else raw)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class _Routes:
    """Endpoint implementations bound to one SimulatorState (no module-level state)."""

    def __init__(self, state: SimulatorState) -> None:
        self.state = state

    def wrap(self, name: str, handler: Handler, api: bool = True) -> Handler:
        """Count the call, apply the edge WAF rules and forced failures, add rate headers, and
        cut the connection after an accepted call when a drop is pending."""

        async def endpoint(request: Request) -> Response:
            self.state.count_request(name)
            if self.state.take_drop_before(name):
                mark_for_drop(request.scope)  # cut before OCS saw it: nothing happens here
                return Response(b"", status_code=204)
            client_ip = request.client.host if request.client else "unknown"
            if not self.state.waf_admits(client_ip):  # §3.2 per-IP rate rule, all routes
                return Response(WAF_BLOCK, status_code=403, media_type="text/html")
            if api and self.state.knobs.require_user_agent and not request.headers.get("user-agent"):
                return Response(WAF_BLOCK, status_code=403, media_type="text/html")  # §1 WAF, /api/ only
            forced = self.state.take_forced_failure(name)
            if forced is not None:
                if forced.status == 429:
                    return _too_many(forced.retry_after or 30)
                extra = {"Retry-After": str(forced.retry_after)} if forced.retry_after else None
                return JSONResponse({"detail": "Simulated failure."}, forced.status, headers=extra)
            try:
                response = await handler(request)
            except _Reject as exc:
                response = exc.response
            rate: RateInfo | None = getattr(request.state, "rate", None)
            if rate is not None:  # §3.1: headers on every response once the throttle ran
                response.headers.update(_rate_headers(rate))
            if 200 <= response.status_code < 300 and self.state.take_drop(name):
                mark_for_drop(request.scope)  # the state change above stands; the answer is lost
            return response

        return endpoint

    # ------------------------------------------------------------------ helpers
    def _chatbot(self, chatbot_id: Any) -> SimChatbot | None:
        return self.state.chatbots.get(str(uuid.UUID(str(chatbot_id)))) if _is_uuid(chatbot_id) else None

    def _throttle(self, request: Request, key: str, limit: int, headers: bool = True) -> None:
        """§3.1: throttles count after auth; refuse only when enforcement is on."""
        rate = self.state.hit_bucket(key, limit)
        if headers:
            request.state.rate = rate
        if rate.exceeded and self.state.knobs.enforce_rate_limit:
            raise _Reject(_too_many(rate.reset_s))

    async def _json_body(self, request: Request) -> dict[str, Any]:
        """DRF JSONParser: empty body = {}, other media type 415, bad JSON 400."""
        raw = await request.body()
        if not raw:
            return {}
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            _reject(415, {"detail": f'Unsupported media type "{content_type}" in request.'})
        try:
            body = json.loads(raw)
        except ValueError as exc:
            _reject(400, {"detail": f"JSON parse error - {exc}"})
        if not isinstance(body, dict):
            kind = type(body).__name__
            _reject(400, {"non_field_errors": [f"Invalid data. Expected a dictionary, but got {kind}."]})
        return body

    def _session(self, request: Request) -> SimSession:
        """§2.1/§2.5 gate for session-bound routes: session, embed key, token, throttle."""
        session = self.state.sessions.get(str(request.path_params["sid"]))
        if session is None:
            _reject(403, NOT_PROVIDED)  # §4.2: the permission fails before the view's 404
        embed_key = request.headers.get("x-embed-key")
        if embed_key is not None:  # §2.1: a server must not send it here
            chatbot = self.state.chatbots[session.chatbot_id]
            if embed_key != chatbot.embed_key:
                _reject(403, {"detail": "Invalid widget embed key"})
            if not _domain_allowed(_origin_host(request), chatbot.allowed_domains):
                _reject(403, NO_PERMISSION)
        token = request.headers.get("x-session-token")
        if not token:
            _reject(403, {"error": "Session token required", "code": "session_token_required"})
        if not self.state.session_token_matches(token, session.id):
            _reject(403, {"error": "Invalid session token", "code": "session_token_invalid"})
        if self.state.session_expired(session):
            _reject(403, {"error": "Session has expired", "code": "session_expired"})
        self._throttle(request, f"session:{session.id}", self.state.knobs.chat_rate_limit)
        return session

    def _management_team(self, request: Request, scope: str) -> str:
        """§2.1 default stack: OAuth Bearer -> X-api-key -> Bearer API key; OAuth needs scope."""
        scheme, _, raw = request.headers.get("authorization", "").partition(" ")
        bearer = raw.strip() if scheme.lower() == "bearer" else ""
        token = self.state.valid_token(bearer) if bearer else None
        if token is not None:
            if scope not in token.scopes:
                _reject(403, NO_PERMISSION)
            return token.team
        api_key = request.headers.get("x-api-key") or bearer
        if api_key:
            if api_key not in self.state.api_keys:
                _reject(401, {"detail": "Invalid token."}, BEARER_CHALLENGE)  # §2.3 expired token
            return self.state.api_keys[api_key]
        _reject(401, NOT_PROVIDED, BEARER_CHALLENGE)

    # ------------------------------------------------------------- /o/token/ §2.3
    async def token(self, request: Request) -> Response:
        client_ip = request.client.host if request.client else "unknown"
        # §2.3: every token request counts against the per-IP credentials bucket.
        self._throttle(request, f"credentials:{client_ip}", self.state.knobs.credentials_rate_limit,
                       headers=False)
        async with request.form() as form:
            fields = {key: value for key, value in form.items() if isinstance(value, str)}
        if fields.get("grant_type") != "client_credentials":
            _reject(400, {"error": "unsupported_grant_type"})
        client_id, secret = fields.get("client_id", ""), fields.get("client_secret", "")
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(encoded).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                _reject(401, {"error": "invalid_client"})
            client_id, secret = unquote_plus(user), unquote_plus(password)
        app = self.state.authenticate_client(client_id, secret)
        if app is None:
            _reject(401, {"error": "invalid_client"})
        requested = fields.get("scope", "").split()
        if (not requested and self.state.knobs.oidc_enabled) or not set(requested) <= ALL_SCOPES:
            _reject(400, {"error": "invalid_scope"})
        token = self.state.issue_token(app, frozenset(requested or ALL_SCOPES))
        body = {"access_token": token.token, "expires_in": self.state.knobs.token_lifetime_s,
                "token_type": "Bearer", "scope": " ".join(requested or sorted(ALL_SCOPES))}
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    # -------------------------------------------------------- chat/start/ §2.4, §4.1
    def _oauth_door(self, request: Request, chatbot_id: Any) -> SimChatbot | None:
        """§2.4.1 step 1; returns the admitted chatbot, None to step aside, or raises 401."""
        if not _is_uuid(chatbot_id):
            _reject(400, {"detail": "chatbot_id must be a valid UUID"})
        chatbot = self._chatbot(chatbot_id)
        if chatbot is None:
            return None  # the view answers 404 later
        scheme, _, raw = request.headers["authorization"].partition(" ")
        token = self.state.valid_token(raw.strip()) if scheme.lower() == "bearer" else None
        app = self.state.oauth_apps.get(token.client_id) if token else None
        if chatbot.allowed_domains:
            origin_ok = _domain_allowed(_origin_host(request), chatbot.allowed_domains)
        else:  # §0.5: server-only channel, so any Origin/Referer is refused
            origin_ok = "origin" not in request.headers and "referer" not in request.headers
        admitted = (chatbot.credential_mode == "oauth" and token is not None and app is not None
                    and token.team == chatbot.team and "chat:start" in token.scopes
                    and chatbot.id in app.allowed_chatbots and origin_ok)
        if not admitted:
            _reject(401, DENIED_CHAT, BEARER_CHALLENGE)
        return chatbot

    def _embed_door(self, request: Request, chatbot_id: Any, key: str) -> SimChatbot | None:
        """§2.4.1 steps 2-3: embed key, then WidgetDomainPermission."""
        if chatbot_id is None:
            _reject(400, {"detail": "Experiment ID required for embedded widget authentication"})
        chatbot = self._chatbot(chatbot_id)
        if chatbot is None:
            return None  # §8.1: unknown chatbot is a 404 before credentials matter
        if chatbot.embed_key is None or key != chatbot.embed_key:
            _reject(401, {"detail": "Invalid widget embed key"})
        if not _domain_allowed(_origin_host(request), chatbot.allowed_domains):
            _reject(403, NO_PERMISSION)
        return chatbot

    def _start_errors(self, body: dict[str, Any]) -> dict[str, Any]:
        errors: dict[str, Any] = _string_field_errors(body, ("participant_remote_id", "participant_name"))
        if "chatbot_id" not in body or body["chatbot_id"] is None:
            errors["chatbot_id"] = ["This field is required." if "chatbot_id" not in body
                                    else "This field may not be null."]
        elif not _is_uuid(body["chatbot_id"]):
            errors["chatbot_id"] = ["Must be a valid UUID."]
        version = body.get("version_number")
        if version is not None and (isinstance(version, bool) or not str(version).lstrip("-").isdigit()):
            errors["version_number"] = ["A valid integer is required."]
        if "session_data" in body and not isinstance(body["session_data"], dict):
            kind = type(body["session_data"]).__name__
            errors["session_data"] = [f'Expected a dictionary of items but got type "{kind}".']
        return errors

    async def start(self, request: Request) -> Response:
        body = await self._json_body(request)
        chatbot_id = body.get("chatbot_id")
        channel: SimChatbot | None = None  # the Chat API Channel that admitted the caller
        via = "keyless"
        if "authorization" in request.headers and chatbot_id is not None:
            channel, via = self._oauth_door(request, chatbot_id), "oauth"
        embed_key = request.headers.get("x-embed-key")
        if channel is None and embed_key is not None:
            channel, via = self._embed_door(request, chatbot_id, embed_key), "embed"
        if channel is None:
            via = "keyless"
            client_ip = request.client.host if request.client else "unknown"
            throttle_key = f"start:ip:{client_ip}"
        else:
            throttle_key = f"start:channel:{channel.id}"  # §3.1: one bucket per channel
        self._throttle(request, throttle_key, self.state.knobs.chat_rate_limit)
        errors = self._start_errors(body)
        if errors:
            _reject(400, errors)
        chatbot = self._chatbot(chatbot_id)
        if chatbot is None:
            _reject(404, {"detail": "No Experiment matches the given query."})
        # §2.4.1 step 6: every simulator caller is anonymous (no cookie users).
        if body.get("version_number") is not None:
            _reject(403, {"error": "Version number requires authentication"})
        if via == "embed" and chatbot.credential_mode != "embed_key":
            _reject(401, DENIED_CHAT, BEARER_CHALLENGE)
        if via == "keyless" and not chatbot.keyless_allowed:
            _reject(401, DENIED_CHAT, BEARER_CHALLENGE)  # post-sunset behaviour (§2.4.4)
        if via != "keyless" and not chatbot.enabled:
            _reject(403, {"error": chatbot.disabled_message or "This chatbot is currently unavailable."})
        name = body.get("participant_name")
        session = self.state.create_session(
            chatbot, str(body.get("participant_remote_id", "")).strip(),
            str(name).strip() if name is not None else None,
            "api" if via == "keyless" else "embedded_widget")  # §6.7 platforms
        return JSONResponse(self._start_body(chatbot, session), status_code=201)

    def _start_body(self, chatbot: SimChatbot, session: SimSession) -> dict[str, Any]:
        return {
            "session_id": session.id,
            "session_token": self.state.sign_session_token(session.id),
            "chatbot": {"id": chatbot.id, "name": chatbot.name,
                        "url": f"{self.state.base_url}/api/experiments/{chatbot.id}/",
                        "version_number": chatbot.version_number, "versions": list(chatbot.versions)},
            "participant": {"identifier": session.identifier, "remote_id": session.remote_id},
        }

    # ---------------------------------------------------------------- message/ §4.2
    def _message_errors(self, body: dict[str, Any]) -> dict[str, Any]:
        errors: dict[str, Any] = _string_field_errors(body, ("message",))
        if "message" not in body:
            errors["message"] = ["This field is required."]  # §3.3: required even with files
        ids = body.get("attachment_ids", [])
        if not isinstance(ids, list):
            errors["attachment_ids"] = [f'Expected a list of items but got type "{type(ids).__name__}".']
        elif bad := {str(i): ["A valid integer is required."] for i, v in enumerate(ids)
                     if isinstance(v, bool) or not isinstance(v, int)}:
            errors["attachment_ids"] = bad
        context = body.get("context", {})
        if not isinstance(context, dict):
            errors["context"] = [f'Expected a dictionary of items but got type "{type(context).__name__}".']
        return errors

    async def message(self, request: Request) -> Response:
        session = self._session(request)
        body = await self._json_body(request)
        errors = self._message_errors(body)
        if errors:
            _reject(400, errors)
        if body.get("version_number") is not None:
            _reject(403, {"error": "Version number requires authentication"})
        if session.status == "complete":
            _reject(400, {"error": "Session has ended"})
        ids: list[int] = body.get("attachment_ids", [])
        if not self.state.attachments_valid(session, ids):
            _reject(400, {"error": "One or more file IDs are invalid"})
        task = self.state.accept_message(session, str(body["message"]).strip(), ids, body.get("context"))
        return JSONResponse({"task_id": task.id, "status": "processing"}, status_code=202)

    # --------------------------------------------------------- task poll §4.3
    async def task_poll(self, request: Request) -> Response:
        session = self._session(request)
        self.state.advance(session)
        task = self.state.tasks.get(request.path_params["task_id"])
        if task is None or self.state.task_expired(task):
            return JSONResponse({"status": "processing", "message": None})  # §0.9 forever
        if task.session_id != session.id:
            return JSONResponse({"detail": "Not found."}, status_code=404)
        if not task.finished:
            knobs = self.state.knobs
            progress = knobs.progress_text
            if knobs.progress_lines:
                running_s = (self.state.clock() - task.accepted_at).total_seconds()
                step = int(max(running_s, 0.0) // max(knobs.progress_every_s, 0.001))
                progress = knobs.progress_lines[min(step, len(knobs.progress_lines) - 1)]
            message = None if progress is None else {
                "created_at": format_timestamp(self.state.clock()), "role": "assistant",
                "content": progress, "metadata": {}, "tags": [], "attachments": []}
            return JSONResponse({"status": "processing", "message": message})
        if task.outcome == "user_error":
            return JSONResponse({"status": "error", "error": self.state.knobs.user_error_text}, 400)
        if task.outcome == "internal_error":
            return JSONResponse({"status": "error", "error": self.state.knobs.internal_error_text}, 500)
        assert task.reply is not None
        return JSONResponse({"status": "complete", "message": self.state.message_json(task.reply)})

    # ------------------------------------------------------- session poll §4.4
    async def session_poll(self, request: Request) -> Response:
        session = self._session(request)
        since_raw = request.query_params.get("since")
        try:
            since = _parse_since(since_raw) if since_raw else None
        except ValueError:
            _reject(400, {"error": "Invalid 'since' parameter format. Use ISO format."})
        try:
            limit = int(request.query_params.get("limit", "50"))
            if limit < 0:
                raise ValueError(limit)
        except ValueError:
            return PlainTextResponse("Server Error (500)", status_code=500)  # §4.4 unhandled
        self.state.advance(session)
        newer = [m for m in session.messages if since is None or m.created_at > since]
        return JSONResponse({
            "messages": [self.state.message_json(m) for m in newer[:limit]],
            "has_more": len(newer) > limit,
            "session_status": "ended" if session.status == "complete" else "active",  # §6.1
        })

    # ------------------------------------------------------------- upload §4.5
    async def upload(self, request: Request) -> Response:
        session = self._session(request)
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "multipart/form-data":
            _reject(415, {"detail": f'Unsupported media type "{content_type}" in request.'})
        if session.status == "complete":
            _reject(400, {"error": "Session has ended"})
        async with request.form() as form:  # closes the spooled temp files
            items = await self._read_uploads([p for p in form.getlist("files") if isinstance(p, UploadFile)])
        max_mb = self.state.knobs.max_upload_mb
        if sum(len(data) for _, _, data in items) > max_mb * 1024 * 1024:
            _reject(400, {"error": f"Total file size exceeds maximum of {max_mb:g}MB"})
        stored = self.state.store_uploads(session, items)
        return JSONResponse({"files": [{"id": f.id, "name": f.name, "size": f.size,
                                        "content_type": f.content_type} for f in stored]}, 201)

    async def _read_uploads(self, parts: list[UploadFile]) -> list[tuple[str, str, bytes]]:
        """Validate every part before anything is stored (all-or-nothing, §4.5)."""
        if not parts:
            _reject(400, {"error": "No files provided"})
        items: list[tuple[str, str, bytes]] = []
        for part in parts:
            name, part_type, data = part.filename or "upload", part.content_type or "", await part.read()
            error = _upload_error(name, part_type, data, self.state.knobs.max_upload_mb)
            if error:
                _reject(400, {"error": error})
            sniffed = _sniff(data) or mimetypes.guess_type(name)[0]  # §4.5: bytes first, then name
            items.append((name, sniffed or part_type or "application/octet-stream", data))
        return items

    # ------------------------------------------------- sessions API §4.8, §4.11
    async def end_session(self, request: Request) -> Response:
        team = self._management_team(request, "sessions:write")
        session = self.state.sessions.get(request.path_params["session_id"])
        if session is None or session.team != team:
            _reject(404, {"error": "Session not found:{id}"})  # literal {id}, §4.8
        self.state.end_session(session)
        return Response(b"", status_code=200)  # §4.8: empty body, not JSON

    def _session_json(self, session: SimSession) -> dict[str, Any]:
        """The ``ExperimentSession`` shape (schema ``ExperimentSession``, docs/OCS.md §4.11 without messages)."""
        chatbot = self.state.chatbots[session.chatbot_id]
        base = self.state.base_url
        return {
            "url": f"{base}/api/sessions/{session.id}/", "id": session.id,
            "team": {"name": session.team, "slug": session.team},
            "experiment": {"id": chatbot.id, "name": chatbot.name, "description": "",
                           "url": f"{base}/api/experiments/{chatbot.id}/",
                           "version_number": chatbot.version_number},
            "participant": {"identifier": session.identifier, "remote_id": session.remote_id},
            "created_at": format_timestamp(session.created_at),
            "updated_at": format_timestamp(session.updated_at or session.created_at),
            "status": session.status, "platform": session.platform, "tags": list(session.tags),
            "state": dict(session.state)}

    async def get_session(self, request: Request) -> Response:
        team = self._management_team(request, "sessions:read")
        session = self.state.sessions.get(request.path_params["session_id"])
        if session is None or session.team != team:
            _reject(404, {"detail": "Not found."})
        self.state.advance(session)
        return JSONResponse({**self._session_json(session),
                             "messages": [self.state.message_json(m) for m in session.messages],
                             "usage": {"total_cost": 0, "by_model": []}})

    async def list_sessions(self, request: Request) -> Response:
        """``GET /api/sessions/`` (schema ``session_list``): the team's sessions, newest first
        unless ``ordering=created_at``, filtered by ``experiment`` (the chatbot's id) and
        ``tags`` (comma separated, all must match), cursor-paginated; ``count`` only on the
        first page."""
        team = self._management_team(request, "sessions:read")
        query = request.query_params
        ordering = query.get("ordering", "-created_at")
        if ordering not in ("-created_at", "created_at"):
            _reject(400, {"ordering": [f"Select a valid choice. {ordering} is not one of the available choices."]})
        try:
            size = max(1, min(int(query.get("page_size", "100")), 1500))
            offset = int(base64.urlsafe_b64decode(query["cursor"]).decode()) if "cursor" in query else 0
        except (ValueError, binascii.Error, UnicodeDecodeError):
            _reject(404, {"detail": "Invalid cursor"})
        sessions = [s for s in self.state.list_sessions() if s.team == team]
        if "experiment" in query:
            sessions = [s for s in sessions if s.chatbot_id == query["experiment"]]
        wanted = {t.strip() for t in query.get("tags", "").split(",") if t.strip()}
        sessions = [s for s in sessions if wanted <= set(s.tags)]
        sessions.sort(key=lambda s: s.created_at, reverse=ordering == "-created_at")
        page = sessions[offset:offset + size]
        more = offset + size < len(sessions)
        body: dict[str, Any] = {"previous": None, "results": [self._session_json(s) for s in page]}
        if more:
            cursor = base64.urlsafe_b64encode(str(offset + size).encode()).decode()
            body["next"] = str(request.url.include_query_params(cursor=cursor))
        else:
            body["next"] = None
        if "cursor" not in query:
            body["count"] = len(sessions)
        return JSONResponse(body)

    async def add_tags(self, request: Request) -> Response:
        """``POST /api/sessions/{id}/tags/`` (docs/OCS.md §4.10): adds the tags, answers all of them."""
        team = self._management_team(request, "sessions:write")
        session = self.state.sessions.get(request.path_params["session_id"])
        if session is None or session.team != team:
            _reject(404, {"error": f"Session not found: {request.path_params['session_id']}"})
        body = await self._json_body(request)
        if "tags" not in body:
            _reject(400, {"error": "Missing 'tags' in request"})
        tags = body["tags"]
        if not isinstance(tags, list):
            _reject(400, {"error": "'tags' must be a list"})
        if not tags or not all(isinstance(t, str) and t.strip() for t in tags):
            _reject(400, {"error": "'tags' must be a list of non-empty strings"})
        for tag in tags:
            if tag.strip() not in session.tags:
                session.tags.append(tag.strip())
        return JSONResponse({"tags": list(session.tags)})

    # ------------------------------------------------------------ files §4.14
    async def file_content(self, request: Request) -> Response:
        team = self._management_team(request, "files:read")  # session tokens are ignored
        file = self.state.files.get(request.path_params["file_id"])
        if file is None or file.team != team:
            _reject(404, {"detail": "Not found."})
        guessed = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        return Response(file.data, media_type=guessed,
                        headers={"Content-Disposition": f'attachment; filename="{file.name}"'})

    # ---------------------------------------------------------------- routing
    def api_routes(self, prefix: str) -> list[Route]:
        chat = f"{prefix}/chat"
        return [
            Route(f"{chat}/start/", self.wrap("start", self.start), methods=["POST"]),
            Route(f"{chat}/{{sid:uuid}}/message/", self.wrap("message", self.message), methods=["POST"]),
            Route(f"{chat}/{{sid:uuid}}/poll/", self.wrap("session_poll", self.session_poll), methods=["GET"]),
            Route(f"{chat}/{{sid:uuid}}/upload/", self.wrap("upload", self.upload), methods=["POST"]),
            Route(f"{chat}/{{sid:uuid}}/{{task_id}}/poll/", self.wrap("task_poll", self.task_poll),
                  methods=["GET"]),
            Route(f"{prefix}/sessions/{{session_id}}/end_experiment_session/",
                  self.wrap("end", self.end_session), methods=["POST"]),
            Route(f"{prefix}/sessions/", self.wrap("session_list", self.list_sessions), methods=["GET"]),
            Route(f"{prefix}/sessions/{{session_id}}/tags/", self.wrap("tags", self.add_tags), methods=["POST"]),
            Route(f"{prefix}/sessions/{{session_id}}/", self.wrap("session_get", self.get_session),
                  methods=["GET"]),
            Route(f"{prefix}/files/{{file_id:int}}/content", self.wrap("files", self.file_content),
                  methods=["GET"]),
        ]


class _SimulatorApp(Starlette):
    """Starlette behind the simulated network (``edge.through_edge``): it must be the outermost
    layer to be handed the server's own ``send``."""

    def __init__(self, state: SimulatorState, routes: list[Route]) -> None:
        super().__init__(routes=routes)
        self.sim = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        await through_edge(self._dated, self.sim.knobs.rtt_s, scope, receive, send)

    async def _dated(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every answer carries an HTTP ``Date`` from the simulator's own clock, stamped as the
        response is made (before the network's return half), as an origin server's is (RFC 9110
        section 6.6.1): on a skewed simulator clock it agrees with ``created_at``, as on a real OCS host.
        uvicorn adds its own first (from the host clock, refreshed once a second); clients read
        the last one."""

        async def dated_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                stamp = formatdate(self.sim.clock().timestamp(), usegmt=True).encode()
                message = {**message, "headers": [*message.get("headers", []), (b"date", stamp)]}
            await send(message)

        await super().__call__(scope, receive, dated_send)


def create_simulator_app(state: SimulatorState, *, control: bool = True) -> Starlette:
    """A Starlette app serving ``state``; ``app.state.sim`` is the state. ``control`` adds the
    simulator-only ``/_simulator/`` routes (knobs, counters) for a simulator in another process."""
    routes = _Routes(state)
    app = _SimulatorApp(state, routes=[
        Route("/o/token/", routes.wrap("token", routes.token, api=False), methods=["POST"]),
        *routes.api_routes("/api"),
        *routes.api_routes("/api/v1"),  # §1: identical optional alias
        *(control_routes(state) if control else []),
    ])
    app.router.redirect_slashes = False  # §1: trailing slashes are exact
    app.state.sim = state
    return app
