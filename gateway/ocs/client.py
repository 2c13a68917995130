"""An async client for the OCS Chat API, exactly as the real server behaves (docs/OCS.md).

The call path is layered like httpx's ``send`` chain, one reason to retry per layer:

* ``_call`` — one HTTP request; translates transport errors and status codes into ``OCSError``
  subclasses (``raise … from exc``), keeping the cause.
* ``start_session`` — refreshes the OAuth token once on a 401 (docs/OCS.md §7.1).
* session-bound calls send ``X-Session-Token`` and never the Bearer token, embed key, Origin
  or Referer (docs/OCS.md §0.2, §2.1, §9).

Restarting an expired session and resending once is the turn engine's job, because it owns the
stored session (``workers/turns.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import httpx
import redis.asyncio as aioredis

from gateway.core.config import BotConfig
from gateway.core.errors import (
    AttachmentUnavailable,
    ConfigError,
    LimitScope,
    OCSAmbiguous,
    OCSAuthFailed,
    OCSRateLimited,
    OCSRejected,
    OCSUnavailable,
    SessionEnded,
    SessionExpired,
)
from gateway.core.fetching import FetchLimits, fetch_url
from gateway.core.keys import Keys
from gateway.core.metrics import Metrics, ocs_status_label
from gateway.core.models import OCSSession
from gateway.core.version import USER_AGENT
from gateway.ocs.budget import Priority, RequestBudget
from gateway.ocs.messages import SessionPage, SessionSummary, TaskPoll, parse_http_date
from gateway.ocs.reachability import Reachability

__all__ = ["LABEL_SEPARATOR", "OCSClient", "labelled_remote_id"]

log = logging.getLogger(__name__)

#: Refresh the cached token this long before OCS says it expires (docs/OCS.md §7.1: expires_in − 5 min).
TOKEN_MARGIN_S = 300
_SESSION_CODES = {"session_expired", "session_token_invalid", "session_token_required"}
#: What OCS answers on a session-bound route when the session no longer exists or its chatbot
#: was archived (the permission check fails before the view's 404, docs/OCS.md §4.2, §8 rule 2).
_SESSION_GONE = "Authentication credentials were not provided."
#: What ``message/`` and ``upload/`` answer (400) once OCS completed the session (docs/OCS.md §4.2, §6.1).
_SESSION_ENDED = "Session has ended"
#: Between a start's label and its participant remote id (``start_session``).
LABEL_SEPARATOR = "#"
#: How far back the look-up of a labelled session reads the newest sessions, beyond the time
#: the label was written: OCS's clock and ours may disagree by this much.
_LOOKUP_SKEW_S = 120.0
_LOOKUP_PAGE = 100
_LOOKUP_PAGES = 10
#: Transport failures after which the request may have reached OCS (it was written, the answer
#: never came): only these make a state-changing call ambiguous.
_MAYBE_DELIVERED = (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.WriteTimeout)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Redirects followed within OCS's origin, with its credentials, for one file.
_FILE_REDIRECTS = 3

#: (scheme, host, port): what must match for OCS's credentials to go with a request.
_Origin = tuple[str, str, int]


class OCSClient:
    """One OCS chatbot's API, on a shared pooled ``httpx.AsyncClient``.

    Parameters:
        name: the bot's name in the config (keys its cached token).
        bot: the bot's configuration.
        http: the process's pooled client (never closed here).
        redis: where the OAuth token is cached, so every process shares one token (docs/OCS.md §2.3: the
            token endpoint is rate limited per IP and fail-closed).
        fetch_allowlist: the internal hosts a reply attachment outside OCS's origin may still be
            fetched from (``GatewayConfig.fetch_allowlist``, ``gateway.core.fetching``).
    """

    def __init__(
        self,
        *,
        name: str,
        bot: BotConfig,
        http: httpx.AsyncClient,
        redis: aioredis.Redis,
        keys: Keys,
        budget: RequestBudget | None = None,
        metrics: Metrics | None = None,
        fetch_allowlist: Sequence[str] = (),
        reachability: Reachability | None = None,
    ) -> None:
        self.name = name
        self.bot = bot
        self.budget = budget
        self.metrics = metrics
        self._http = http
        self._redis = redis
        self._keys = keys
        self._fetch_allowlist = tuple(fetch_allowlist)
        origin = _origin(httpx.URL(bot.base_url))
        if origin is None:
            raise ConfigError(f"bots.{name}.base_url {bot.base_url!r} is not an http(s) URL with a host")
        self._origin: _Origin = origin
        #: The origin as ``Reachability`` names it (scheme://host:port).
        self.origin = f"{origin[0]}://{origin[1]}:{origin[2]}"
        self._reachability = reachability
        self._token: tuple[str, float] | None = None  # (token, expires_at) memo of the Redis copy
        # Concurrent turns that find no token wait for one fetch instead of each minting one.
        self._token_lock = asyncio.Lock()

    # -- one request ----------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        priority: Priority = Priority.WAITING,
        session_id: str | None = None,
        start_channel: str | None = None,
        changes_state: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request, inside the shared request budget.

        ``endpoint``: the metric's name for this call (``gateway.core.metrics.OCS_ENDPOINTS``).
        ``changes_state``: the request makes OCS act (a user message); a failure after it left is
        then ``OCSAmbiguous``, not ``OCSUnavailable``.
        """
        if self.budget is not None:
            grant = await self.budget.acquire(
                bot=self.name, base_url=self.bot.base_url, priority=priority,
                session_id=session_id, start_channel=start_channel,
            )
            if not grant.granted:
                raise OCSRateLimited(grant.wait_s, f"request budget ({grant.scope})", scope=LimitScope.BUDGET)
        url = f"{self.bot.base_url}{path}"
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        try:
            try:
                response = await self._http.request(method, url, headers=all_headers, **kwargs)
            except httpx.TransportError:
                self._reached(False)
                raise
        except _MAYBE_DELIVERED as exc:
            self._count(endpoint, "error")
            if changes_state:
                raise OCSAmbiguous(f"{method} {path}: no answer ({type(exc).__name__})") from exc
            raise OCSUnavailable(f"{method} {path}: {type(exc).__name__}") from exc
        except httpx.TimeoutException as exc:
            self._count(endpoint, "error")
            raise OCSUnavailable(f"{method} {path}: timed out") from exc
        except httpx.TransportError as exc:
            self._count(endpoint, "error")
            raise OCSUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        self._reached(status < 500)
        if status < 400:
            self._count(endpoint, str(status))
            return response
        body = _body(response)
        # The hosted WAF's block page is HTML, not OCS's JSON: counted apart, as the alert differs.
        self._count(endpoint, "waf" if status == 403 and not isinstance(body, dict) else str(status))
        if status == 429:
            # OCS throttles a session's calls per session and starts per channel (docs/OCS.md
            # §3.1): a throttled start must not stop the turns of sessions already open.
            scope = (
                LimitScope.SESSION if session_id is not None else LimitScope.STARTS if start_channel else LimitScope.SERVICE
            )
            wait = _retry_after(response, body)
            await self._block(scope, wait, session_id, start_channel)
            raise OCSRateLimited(wait, str(body), scope=scope)
        if status == 403 and not isinstance(body, dict):
            # Not OCS speaking: the hosted WAF's block page. Everyone waits, nothing is refused.
            wait = self.bot.waf_backoff_s
            await self._block(LimitScope.SERVICE, wait, None, None)
            raise OCSRateLimited(wait, "OCS's web application firewall refused the request", scope=LimitScope.SERVICE)
        if status >= 500 and path.endswith("/poll/") and isinstance(body, dict) and body.get("status") == "error":
            return response  # a task that failed inside OCS: the caller reads it (docs/OCS.md §4.3)
        if status in (502, 504) and changes_state:
            raise OCSAmbiguous(f"{method} {path}: HTTP {status} from a proxy")
        if status >= 500:
            raise OCSUnavailable(f"{method} {path}: HTTP {status}")
        if status == 403 and isinstance(body, dict) and body.get("code") in _SESSION_CODES:
            raise SessionExpired(str(body["code"]))
        if status == 403 and session_id is not None and isinstance(body, dict) and body.get("detail") == _SESSION_GONE:
            raise SessionExpired("session_gone")
        if status == 400 and path.endswith("/poll/") and isinstance(body, dict) and body.get("status") == "error":
            return response
        if status == 400 and session_id is not None and isinstance(body, dict) and body.get("error") == _SESSION_ENDED:
            raise SessionEnded()
        raise OCSRejected(status, body)

    def _reached(self, answered: bool) -> None:
        """Tell ``Reachability`` whether OCS answered (any status below 500 is OCS speaking)."""
        if self._reachability is not None:
            if answered:
                self._reachability.answered(self.origin)
            else:
                self._reachability.failed(self.origin)

    async def probe(self) -> None:
        """One cheap request that proves OCS answers, sent while turns wait for it
        (``Reachability``): ``GET /api/chat/start/``, a POST-only route, answers 405 and creates
        nothing; it needs no credentials, and goes through the budget like any request."""
        try:
            await self._call("GET", "/api/chat/start/", endpoint="probe", priority=Priority.BACKGROUND)
        except (OCSRejected, OCSUnavailable, OCSRateLimited, SessionExpired, SessionEnded):
            pass  # the answer (or none) is what Reachability heard; nothing else to do

    def _count(self, endpoint: str, status: str) -> None:
        if self.metrics is not None:
            # Raw codes are folded: any three digits would otherwise make a series of their own.
            label = ocs_status_label(int(status)) if status.isdigit() else status
            self.metrics.ocs_requests.labels(self.name, endpoint, label).inc()

    async def _block(self, scope: LimitScope, seconds: float, session_id: str | None, start_channel: str | None) -> None:
        if self.budget is None:
            return
        if scope is LimitScope.SESSION and session_id is not None:
            await self.budget.block_session(session_id, seconds)
        elif scope is LimitScope.STARTS and start_channel is not None:
            await self.budget.block_starts(start_channel, seconds)
        else:
            await self.budget.block(self.bot.base_url, seconds, reason="OCS asked us to wait")

    # -- credentials ----------------------------------------------------------------------

    async def _access_token(self, *, refresh: bool = False) -> str:
        stale = self._token[0] if refresh and self._token else None
        async with self._token_lock:
            if stale is not None and self._token and self._token[0] != stale:
                return self._token[0]  # another turn refreshed it while we waited
            return await self._fetch_token(refresh=refresh)

    async def _fetch_token(self, *, refresh: bool) -> str:
        now = time.time()
        if not refresh and self._token and self._token[1] - TOKEN_MARGIN_S > now:
            return self._token[0]
        key = self._keys.oauth_token(self.name)
        if not refresh:
            cached = await self._redis.get(key)
            if cached:
                token, expires_at = json.loads(cached)
                if expires_at - TOKEN_MARGIN_S > now:
                    self._token = (token, expires_at)
                    return str(token)
        assert self.bot.client_id and self.bot.client_secret
        response = await self._call(
            "POST",
            "/o/token/",
            endpoint="token",
            data={
                "grant_type": "client_credentials",
                "client_id": self.bot.client_id,
                "client_secret": self.bot.client_secret.reveal(),
                # Always explicit: the default set may include OIDC scopes a machine app may
                # never receive (docs/OCS.md §2.3).
                "scope": self.bot.scopes,
            },
        )
        payload = response.json()
        if self.metrics is not None:
            self.metrics.ocs_token_refreshes.labels(self.name).inc()
        token, expires_in = str(payload["access_token"]), float(payload.get("expires_in", 36000))
        expires_at = now + expires_in
        self._token = (token, expires_at)
        ttl = max(int(expires_in - TOKEN_MARGIN_S), 1)
        await self._redis.set(key, json.dumps([token, expires_at]), ex=ttl)
        return token

    async def _management_headers(self, *, refresh: bool = False) -> dict[str, str]:
        if self.bot.auth == "oauth":
            return {"Authorization": f"Bearer {await self._access_token(refresh=refresh)}"}
        if self.bot.api_key is not None:
            return {"X-api-key": self.bot.api_key.reveal()}
        return {}

    # -- chat API ---------------------------------------------------------------------------

    async def start_session(self, *, remote_id: str, name: str | None, channel: str = "", label: str = "") -> OCSSession:
        """``POST /api/chat/start/`` (docs/OCS.md §4.1); refreshes the OAuth token once on a 401.

        ``label``: makes this start findable afterwards (``find_labelled_session``): it is
        appended to the participant's remote id (``telegram:42#k3f9``), the one field of a start
        that OCS stores for an OAuth caller and shows again (docs/OCS.md §2.6: ``session_data`` is ignored).

        Raises:
            OCSAuthFailed: the credentials are refused even with a fresh token.
            OCSAmbiguous: the request left and no answer came back: OCS may have created the
                session (its token was only in the lost answer).
            OCSRejected, OCSUnavailable, OCSRateLimited.
        """
        body: dict[str, Any] = {"chatbot_id": self.bot.chatbot_id, "participant_remote_id": labelled_remote_id(remote_id, label)}
        if name:  # empty strings are a 400 (docs/OCS.md §4.1): omit instead
            body["participant_name"] = name[:320]
        for attempt in (1, 2):
            headers: dict[str, str] = {}
            if self.bot.auth == "oauth":
                headers["Authorization"] = f"Bearer {await self._access_token(refresh=attempt == 2)}"
            elif self.bot.auth == "embed_key":
                assert self.bot.embed_key and self.bot.embed_origin
                headers["X-Embed-Key"] = self.bot.embed_key.reveal()
                headers["Origin"] = self.bot.embed_origin  # the one mode that needs it (docs/OCS.md §2.4.1)
            try:
                response = await self._call(
                    "POST", "/api/chat/start/", endpoint="start", headers=headers, json=body,
                    priority=Priority.SEND, start_channel=channel or self.name, changes_state=True,
                )
            except OCSRejected as exc:
                if exc.status == 401 and self.bot.auth == "oauth" and attempt == 1:
                    continue
                if exc.status == 401:
                    raise OCSAuthFailed(exc.status, exc.body) from exc
                raise
            data = response.json()
            if not data.get("session_token"):
                # Legacy embed-key channels give no token (docs/OCS.md §2.5); we cannot hold such a session.
                raise OCSRejected(response.status_code, "the chatbot's channel issues no session token")
            return OCSSession(str(data["session_id"]), str(data["session_token"]), self.bot.chatbot_id, time.time())
        raise AssertionError("unreachable")

    def _session_headers(self, session: OCSSession) -> dict[str, str]:
        return {"X-Session-Token": session.session_token}

    async def send_message(
        self,
        session: OCSSession,
        text: str,
        *,
        attachment_ids: Sequence[int] = (),
        context: Mapping[str, Any] | None = None,
    ) -> str:
        """``POST /api/chat/{sid}/message/`` (docs/OCS.md §4.2); returns the task id."""
        body: dict[str, Any] = {"message": text}
        if attachment_ids:
            body["attachment_ids"] = list(attachment_ids)
        if context:
            body["context"] = dict(context)
        response = await self._call(
            "POST", f"/api/chat/{session.session_id}/message/", endpoint="send", headers=self._session_headers(session), json=body,
            priority=Priority.SEND, session_id=session.session_id, changes_state=True,
        )
        return str(response.json()["task_id"])

    async def poll_task(self, session: OCSSession, task_id: str, *, priority: Priority = Priority.WAITING) -> TaskPoll:
        """``GET /api/chat/{sid}/{task}/poll/`` (docs/OCS.md §4.3). Progress text is not a reply: it
        comes apart (``TaskPoll.progress``). ``priority``: a poll made only to show progress
        yields first when the budget is short (``Priority.BACKGROUND``)."""
        response = await self._call(
            "GET", f"/api/chat/{session.session_id}/{task_id}/poll/", endpoint="task", headers=self._session_headers(session),
            priority=priority, session_id=session.session_id,
        )
        data = _body(response)
        if not isinstance(data, dict):
            raise OCSUnavailable(f"task poll answered {response.status_code} without JSON")
        poll = TaskPoll.parse(data, failed=response.status_code >= 400)
        return replace(poll, served_at=parse_http_date(response.headers.get_list("date")))

    async def session_messages(
        self, session: OCSSession, *, since: str | None, limit: int = 50, priority: Priority = Priority.WAITING
    ) -> SessionPage:
        """``GET /api/chat/{sid}/poll/`` (docs/OCS.md §4.4): messages with ``created_at > since``, oldest first."""
        params: dict[str, Any] = {"limit": limit}
        if since:
            params["since"] = since  # httpx URL-encodes it, so a "+00:00" never becomes a space
        response = await self._call(
            "GET", f"/api/chat/{session.session_id}/poll/", endpoint="messages", headers=self._session_headers(session), params=params,
            priority=priority, session_id=session.session_id,
        )
        data = _body(response)
        if not isinstance(data, dict):
            raise OCSUnavailable(f"session messages answered {response.status_code} without JSON")
        return SessionPage.parse(data)

    async def upload(self, session: OCSSession, files: Sequence[tuple[str, bytes, str]]) -> list[int]:
        """``POST /api/chat/{sid}/upload/`` (docs/OCS.md §4.5), multipart ``files``; returns the file ids."""
        parts = [("files", (name, data, content_type)) for name, data, content_type in files]
        response = await self._call(
            "POST", f"/api/chat/{session.session_id}/upload/", endpoint="upload", headers=self._session_headers(session), files=parts,
            priority=Priority.SEND, session_id=session.session_id,
        )
        return [int(item["id"]) for item in response.json()["files"]]

    async def end_session(self, session_id: str) -> bool:
        """``POST /api/sessions/{id}/end_experiment_session/`` (docs/OCS.md §4.8); needs ``sessions:write``.

        Returns False where the bot's credentials cannot end sessions (embed key, keyless):
        the gateway then only forgets the session, which has the same effect for the user.
        """
        for attempt in (1, 2):
            headers = await self._management_headers(refresh=attempt == 2)
            if not headers:
                return False
            try:
                await self._call(
                    "POST", f"/api/sessions/{session_id}/end_experiment_session/", endpoint="end", headers=headers, json={},
                    priority=Priority.SEND,
                )
            except OCSRejected as exc:
                if exc.status == 401 and self.bot.auth == "oauth" and attempt == 1:
                    continue  # a stale cached token: refresh once, as start does
                if exc.status in (401, 403, 404):
                    # Gone already, or these credentials may not end sessions (no sessions:write):
                    # forgetting the session locally gives the user the same fresh start.
                    return False
                raise
            return True
        return False

    @property
    def can_manage_sessions(self) -> bool:
        """Whether this bot's credentials reach the sessions API (OAuth, or an API key); the
        chat-only modes (embed key, keyless) do not."""
        return self.bot.auth == "oauth" or self.bot.api_key is not None

    async def _management(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call to the management API (``/api/sessions/…``) with the Bearer token or API key,
        refreshing a stale cached token once."""
        for attempt in (1, 2):
            headers = await self._management_headers(refresh=attempt == 2)
            try:
                return await self._call(method, path, endpoint="session", headers=headers, priority=Priority.SEND, **kwargs)
            except OCSRejected as exc:
                if exc.status == 401 and self.bot.auth == "oauth" and attempt == 1:
                    continue
                raise
        raise AssertionError("unreachable")

    async def find_labelled_session(self, remote_id: str, label: str, *, created_after: float) -> SessionSummary | None:
        """The session a start labelled ``label`` created (``start_session``), if OCS has one:
        ``GET /api/sessions/?experiment=…`` (``sessions:read``), newest first, read back to a
        little before ``created_after`` (epoch seconds). None when there is none.

        It tells whether a start whose answer was lost created a session; it cannot give that
        session back for use: its ``session_token`` was only in the lost answer (docs/OCS.md §2.5), and no
        other call returns it.

        Raises:
            OCSRejected: these credentials may not list sessions (403 without ``sessions:read``).
            OCSUnavailable, OCSRateLimited.
        """
        wanted = labelled_remote_id(remote_id, label)
        params: dict[str, Any] = {"experiment": self.bot.chatbot_id, "ordering": "-created_at", "page_size": _LOOKUP_PAGE}
        for _ in range(_LOOKUP_PAGES):
            data = _body(await self._management("GET", "/api/sessions/", params=params))
            if not isinstance(data, dict):
                raise OCSUnavailable("the session list answered without JSON")
            page = [SessionSummary.parse(item) for item in data.get("results") or () if isinstance(item, Mapping)]
            for session in page:
                if session.remote_id == wanted:
                    return session
            older = [s.created_at for s in page if s.created_at is not None]
            cursor = httpx.URL(str(data["next"])).params.get("cursor") if data.get("next") else None
            if cursor is None or (older and min(older) < created_after - _LOOKUP_SKEW_S):
                return None
            params["cursor"] = cursor
        return None

    async def tag_session(self, session_id: str, tags: Sequence[str]) -> bool:
        """``POST /api/sessions/{id}/tags/`` (docs/OCS.md §4.10, ``sessions:write``). False where these
        credentials may not (no management credentials, 403) or the session is gone (404)."""
        if not self.can_manage_sessions:
            return False
        try:
            await self._management("POST", f"/api/sessions/{session_id}/tags/", json={"tags": list(tags)})
        except OCSRejected as exc:
            if exc.status in (401, 403, 404):
                return False
            raise
        return True

    async def download_file(self, content_url: str) -> bytes:
        """A reply attachment's bytes, at most ``bot.max_file_bytes``.

        OCS's files need the Bearer token with ``files:read`` or the API key, not the session
        token (docs/OCS.md §0.10, §4.14). Those credentials go only to OCS's own origin (``base_url``'s
        scheme, host and port), also across its redirects: a URL elsewhere, whether the message
        or a redirect names it, is fetched as a user's file is, without credentials and through
        the address checks (``gateway.core.fetching``), so it can neither collect our token nor
        point us inward.

        Raises:
            AttachmentUnavailable: too large, refused, not there (an HTTP 4xx), or a host
                outside OCS failed: the caller sends the text without the file.
            OCSUnavailable: OCS could not be reached or failed (5xx): worth a retry.
        """
        cap = self.bot.max_file_bytes
        url = content_url
        for _ in range(_FILE_REDIRECTS + 1):
            own = _own_url(url, self._origin)
            if own is None:
                log.info("reply attachment outside OCS's origin, fetched without credentials: %s", _loggable(url))
                fetched = await fetch_url(url, allowlist=self._fetch_allowlist, limits=FetchLimits(max_bytes=cap))
                return fetched.data
            got = await self._download_own(own, cap)
            if isinstance(got, bytes):
                return got
            url = str(got)
        raise AttachmentUnavailable(f"OCS redirected the file more than {_FILE_REDIRECTS} times")

    async def _download_own(self, url: httpx.URL, cap: int) -> bytes | httpx.URL:
        """One GET within OCS's origin, with its credentials: the bytes, or where a redirect
        points. httpx never follows the redirect itself: it would carry our ``X-api-key`` header
        to any host."""
        headers = {"User-Agent": USER_AGENT, "Accept": "*/*", **(await self._management_headers())}
        request = self._http.build_request("GET", url, headers=headers)
        where = _loggable(str(url))
        try:
            response = await self._http.send(request, stream=True, follow_redirects=False)
        except httpx.TransportError as exc:
            self._count("file", "error")
            raise OCSUnavailable(f"GET {where}: {type(exc).__name__}") from exc
        try:
            status = response.status_code
            self._count("file", str(status))
            if status in _REDIRECTS:
                location = response.headers.get("location")
                if not location:
                    raise AttachmentUnavailable(f"OCS answered a redirect ({status}) without a Location for the file")
                try:
                    return url.join(location)
                except (httpx.InvalidURL, ValueError):
                    raise AttachmentUnavailable("OCS redirected the file to an invalid address") from None
            if status >= 500:
                raise OCSUnavailable(f"GET {where}: HTTP {status}")
            if status != 200:
                raise AttachmentUnavailable(f"OCS answered HTTP {status} for the file")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise AttachmentUnavailable(f"the file is larger than {cap} bytes")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data.extend(chunk)
                if len(data) > cap:  # no Content-Length, or a wrong one
                    raise AttachmentUnavailable(f"the file is larger than {cap} bytes")
            return bytes(data)
        except httpx.TransportError as exc:
            raise OCSUnavailable(f"GET {where}: the download broke off ({type(exc).__name__})") from exc
        finally:
            await response.aclose()


def labelled_remote_id(remote_id: str, label: str) -> str:
    """The participant remote id a start sends: ``remote_id``, then the start's label if any,
    within OCS's 255 characters (the label is kept whole; the id gives way)."""
    if not label:
        return remote_id[:255]
    suffix = f"{LABEL_SEPARATOR}{label}"
    return remote_id[: 255 - len(suffix)] + suffix


def _origin(url: httpx.URL) -> _Origin | None:
    """Scheme, host and port (default ports spelled out); None for a URL that may not carry our
    credentials anywhere (another scheme, no host, a user name in it)."""
    if url.scheme not in ("http", "https") or not url.host or url.userinfo:
        return None
    return url.scheme, url.raw_host.decode("ascii").lower(), url.port or (443 if url.scheme == "https" else 80)


def _own_url(url: str, origin: _Origin) -> httpx.URL | None:
    """``url`` parsed, if it lies within ``origin``; else None (it is someone else's)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
    return parsed if _origin(parsed) == origin else None


def _loggable(url: str) -> str:
    """The URL without its query (a signed link's token)."""
    return url.split("?", 1)[0]


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]


def _retry_after(response: httpx.Response, body: Any) -> float:
    header = response.headers.get("Retry-After")
    if header:
        try:
            return max(float(header), 0.0)
        except ValueError:
            pass
    if isinstance(body, dict) and isinstance(body.get("available_in"), (int, float)):
        return float(body["available_in"])
    return 30.0
