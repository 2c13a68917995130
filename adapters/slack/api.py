"""The Slack Web API client, and the one place where its errors become ours.

slack_sdk raises ``SlackApiError`` for anything but HTTP 200 with ``ok: true`` (PROTOCOLS.md §2.6):
logical failures arrive as **HTTP 200** with ``{"ok": false, "error": "<code>"}`` and rate limits
as HTTP 429 with ``Retry-After``. ``slack_errors`` turns those, and network failures, into the
``gateway.core.errors`` delivery family, keeping the cause (STYLE.md §4), so nothing past this module
knows about slack_sdk exceptions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from gateway.core.errors import (
    DeliveryError,
    DeliveryRejected,
    RecipientGone,
    RetryLater,
)

__all__ = ["GONE_CODES", "RETRY_CODES", "SlackApi", "classify", "slack_errors"]

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
        "token_expired",
        "invalid_auth",
        "not_authed",
        "team_access_not_granted",
        "ekm_access_denied",
        "cannot_dm_bot",
        "user_not_found",
    }
)
#: Codes that mean Slack is failing for now; the same call may succeed in a few seconds.
RETRY_CODES = frozenset(
    {"fatal_error", "internal_error", "service_unavailable", "request_timeout", "team_added_to_org"}
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
        return RetryLater(retry_after_s if retry_after_s is not None else DEFAULT_RATELIMIT_S, code or "ratelimited")
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


class SlackApi:
    """The ``AsyncWebClient`` of one channel.

    The client holds no token: every call passes the token of the workspace it is for, so one
    client serves all installations (slack_sdk reads ``token=`` per call). It holds no aiohttp
    session either: slack_sdk then opens and closes one per call, which costs a connection per
    message (fine at Slack's ~1 message/s per channel) and leaves nothing bound to an event loop
    or waiting to be closed, whichever process and loop call it.
    """

    def __init__(self, base_url: str, *, timeout_s: float = 15.0) -> None:
        # slack_sdk joins base_url + method, so the trailing slash matters (§2.6).
        self.base_url = base_url.rstrip("/") + "/"
        self._client = AsyncWebClient(base_url=self.base_url, timeout=int(timeout_s))

    def client(self) -> AsyncWebClient:
        return self._client

    async def aclose(self) -> None:
        """Nothing to release (see the class docstring); kept for the adapter's lifecycle."""
