"""The Slack Web API client, and the one place where its errors become ours.

slack_sdk raises ``SlackApiError`` for anything but HTTP 200 with ``ok: true`` (docs/PLATFORMS.md §2.6):
logical failures arrive as **HTTP 200** with ``{"ok": false, "error": "<code>"}`` and rate limits
as HTTP 429 with ``Retry-After``. ``slack_errors`` turns those, and network failures, into the
``gateway.core.errors`` delivery family, keeping the cause, so nothing past this module
knows about slack_sdk exceptions.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from gateway.core.errors import (
    DeliveryError,
    DeliveryRejected,
    RecipientGone,
    RetryLater,
)

__all__ = ["GONE_CODES", "RETRY_CODES", "SlackApi", "classify", "new_session", "slack_errors"]

log = logging.getLogger(__name__)

#: Codes after which this conversation (or the whole workspace) cannot be reached again: the
#: channel is gone or archived, the bot was removed, or the app's token was revoked/uninstalled.
GONE_CODES = frozenset(
    {
        "channel_not_found",
        "is_archived",
        "not_in_channel",
        "account_inactive",
        "token_revoked",
        "invalid_refresh_token",
        "invalid_auth",
        "not_authed",
        "team_access_not_granted",
        "ekm_access_denied",
        "cannot_dm_bot",
        "user_not_found",
    }
)
#: Codes that mean Slack is failing for now; the same call may succeed in a few seconds.
#: ``token_expired`` is here, not gone: only rotating tokens expire, and the next attempt asks the
#: token keeper again, which refreshes it (``tokens.py``).
RETRY_CODES = frozenset(
    {"fatal_error", "internal_error", "service_unavailable", "request_timeout", "team_added_to_org", "token_expired"}
)
#: How long to wait after a transient failure that names no delay.
TRANSIENT_RETRY_S = 5.0
#: A 429 without a usable Retry-After still waits this long (Slack's usual value is 1-60 s).
DEFAULT_RATELIMIT_S = 1.0


def classify(code: str, *, status: int = 200, retry_after_s: float | None = None) -> DeliveryError:
    """Our error for a Slack error code (and HTTP status): retry, gone, or rejected for good.

    Anything unknown is ``DeliveryRejected`` (``msg_too_long``, ``no_text``, ``invalid_blocks``,
    ``missing_scope``...): a dead letter an operator looks at beats a retry loop that cannot win.
    """
    if status == 429 or code in ("ratelimited", "rate_limited"):
        return RetryLater(
            retry_after_s if retry_after_s is not None else DEFAULT_RATELIMIT_S, code or "ratelimited", rate_limited=True
        )
    if code in GONE_CODES:
        return RecipientGone(code)
    if code in RETRY_CODES or status >= 500:
        return RetryLater(retry_after_s if retry_after_s is not None else TRANSIENT_RETRY_S, code or f"HTTP {status}")
    return DeliveryRejected(code or f"HTTP {status}")


def _retry_after(headers: Mapping[str, Any] | None) -> float | None:
    for name in ("Retry-After", "retry-after"):
        value = (headers or {}).get(name)
        if value is not None:
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
    return None


@contextmanager
def slack_errors(method: str) -> Iterator[None]:
    """Translate what a Web API call raises inside the block into ``DeliveryError``s.

    Raises:
        RetryLater: 429 (after ``Retry-After``), a transient ``ok: false`` code, 5xx, network.
        RecipientGone: the channel, the bot's membership or the token is gone.
        DeliveryRejected: the request itself is wrong and will never succeed.
    """
    try:
        yield
    except SlackApiError as exc:
        response = exc.response
        body = response.data if isinstance(response.data, dict) else {}
        code = str(body.get("error") or "")
        error = classify(code, status=response.status_code, retry_after_s=_retry_after(response.headers))
        log.info("slack %s failed: %s (HTTP %s)", method, code or "-", response.status_code)
        raise error from exc
    except (TimeoutError, SlackClientError, aiohttp.ClientError, OSError) as exc:
        # SlackRequestError (a failed file upload POST), refused connections, timeouts.
        raise RetryLater(TRANSIENT_RETRY_S, f"{method}: {type(exc).__name__}") from exc


class _WebClient(AsyncWebClient):
    """``AsyncWebClient`` whose ``oauth.v2.access`` sends the client credentials as an HTTP Basic
    header built here: slack_sdk builds it with ``aiohttp.BasicAuth``, deprecated in aiohttp 3.14.
    Bolt's OAuth flow and token rotator call this method, so they get the same fix."""

    async def oauth_v2_access(
        self,
        *,
        client_id: str,
        client_secret: str,
        code: str | None = None,
        redirect_uri: str | None = None,
        grant_type: str | None = None,
        refresh_token: str | None = None,
        **kwargs: Any,
    ) -> AsyncSlackResponse:
        given = {"code": code, "redirect_uri": redirect_uri, "grant_type": grant_type, "refresh_token": refresh_token}
        kwargs.update({name: value for name, value in given.items() if value is not None})
        basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        return await self.api_call("oauth.v2.access", data=kwargs, headers={"Authorization": f"Basic {basic}"})


class SlackApi:
    """The ``AsyncWebClient`` of one channel, on the process's shared aiohttp session.

    The client holds no token: every call passes the token of the workspace it is for, so one
    client serves all installations (slack_sdk reads ``token=`` per call). Without a session
    slack_sdk opens one per call (a TCP and TLS handshake per message), so ``open`` binds the
    client to the session the process lends (``AdapterServices.aiohttp_session``) or, when none is
    lent (a lone adapter in a test or a CLI command), to one of its own that ``aclose`` closes.
    """

    def __init__(self, base_url: str, *, timeout_s: float = 15.0) -> None:
        # slack_sdk joins base_url + method, so the trailing slash matters (docs/PLATFORMS.md §2.6).
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout_s = timeout_s
        self._owned: aiohttp.ClientSession | None = None
        self._client = _WebClient(base_url=self.base_url, timeout=int(timeout_s))

    def open(self, session: aiohttp.ClientSession | None) -> None:
        """Bind to ``session`` (not ours to close) or to a new one of ours; call on the loop that
        will use it. slack_sdk applies its own timeout only to sessions it makes, so a session of
        ours carries the timeout itself."""
        if session is None:
            self._owned = new_session(self.timeout_s)
            session = self._owned
        self._client.session = session

    def client(self) -> AsyncWebClient:
        return self._client

    async def aclose(self) -> None:
        if self._owned is not None:
            await self._owned.close()
            self._owned = None
        self._client.session = None


def new_session(timeout_s: float = 15.0) -> aiohttp.ClientSession:
    """The aiohttp session Slack calls share: a whole-call timeout, since a session's timeout is
    the only one slack_sdk applies to a session it did not create."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))
