"""One Graph API call, and Meta's errors translated into the gateway's.

Graph API errors come as ``{"error": {"message", "type", "code", "error_data": {"details"},
"error_subcode", "fbtrace_id"}}``; Meta asks that handling be built on ``code``, not on the
message or the HTTP status (docs/WHATSAPP.md, "Errors and limits"). ``translate`` maps them in one
table onto retry later / user gone / give up, keeping Meta's code and details in the reason; the
pacing consequences of the rate-limit codes are the caller's (``outbound``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.core.errors import DeliveryError, DeliveryRejected, RecipientGone, RetryLater

__all__ = [
    "GraphClient",
    "GraphError",
    "NETWORK_RETRY_S",
    "PAIR_RATE_LIMITED",
    "REENGAGEMENT_REQUIRED",
    "THROUGHPUT_LIMITED",
    "translate",
]

log = logging.getLogger(__name__)

#: Too many messages from the number (its throughput, 80/s by default).
THROUGHPUT_LIMITED = 130429
#: Too many messages to one user in a short time: the pair rate.
PAIR_RATE_LIMITED = 131056
#: More than 24 hours since the user last wrote: only a template may go.
REENGAGEMENT_REQUIRED = 131047
#: After a network failure, a timeout or a 5xx, try again this much later.
NETWORK_RETRY_S = 5.0

#: Codes that mean: wait and send the same message again (with the wait in seconds).
_RETRY = {
    THROUGHPUT_LIMITED: 2.0,
    PAIR_RATE_LIMITED: 6.0,
    4: 60.0,        # the app's own call rate limit
    80007: 60.0,    # the WhatsApp Business Account's rate limit
    133016: 60.0,   # registration rate limit
    131048: 300.0,  # spam rate limit: the number's quality went down
    1: NETWORK_RETRY_S, 2: NETWORK_RETRY_S,  # API unknown / service temporarily unavailable
    131000: NETWORK_RETRY_S,  # something went wrong
    131016: 30.0,   # service overloaded
    133004: 30.0,   # server temporarily unavailable
}
_RATE_LIMITS = frozenset({THROUGHPUT_LIMITED, PAIR_RATE_LIMITED, 4, 80007, 133016, 131048})
#: Codes that mean: this user cannot be reached (not on WhatsApp, an old app, blocked us).
_GONE = frozenset({
    131026,  # message undeliverable: not a WhatsApp user, old version, terms not accepted
    131030,  # recipient not in the allowed list (a test number)
})
#: Codes that mean the channel itself is broken, named so the operator knows what to fix.
_BROKEN = {
    0: "the access token is refused (AuthException): renew access_token",
    190: "the access token expired or is invalid: renew access_token (a system user's token does not expire)",
    10: "the token lacks whatsapp_business_messaging permission",
    200: "the token lacks permission for this phone number",
    131031: "the business account is locked",
    133010: "the phone number is not registered on the Cloud API",
    368: "the number is temporarily blocked for policy violations",
}


@dataclass(frozen=True, slots=True)
class GraphError:
    """A Graph API error answer: HTTP status, Meta's code, its title and details."""

    status: int
    code: int | None
    message: str
    details: str
    #: The ``Retry-After`` header, when the answer had one.
    retry_after: str | None = None

    @classmethod
    def of(cls, response: httpx.Response) -> GraphError:
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        retry_after = response.headers.get("retry-after")
        if not isinstance(error, dict):
            return cls(response.status_code, None, response.text[:200], "", retry_after)
        data = error.get("error_data")
        details = data.get("details") if isinstance(data, dict) else None
        code = error.get("code")
        return cls(
            response.status_code,
            code if isinstance(code, int) else int(code) if isinstance(code, str) and code.isdigit() else None,
            str(error.get("message") or "")[:300],
            str(details or "")[:300],
            retry_after,
        )

    def describe(self) -> str:
        text = f"WhatsApp error {self.code}: {self.message}" if self.code is not None else f"HTTP {self.status}: {self.message}"
        return f"{text} ({self.details})" if self.details and self.details not in self.message else text


def translate(error: GraphError, retry_after: str | None = None) -> DeliveryError:
    """The gateway error for a Graph API error answer (raise it ``from`` nothing: the answer
    is the cause, and its code and details are in the reason)."""
    code, reason = error.code, error.describe()
    retry_after = retry_after if retry_after is not None else error.retry_after
    if code in _RETRY:
        return RetryLater(_RETRY[code], reason, rate_limited=code in _RATE_LIMITS)
    if code in _GONE:
        return RecipientGone(reason)
    if code in _BROKEN:
        return DeliveryRejected(f"{reason}: {_BROKEN[code]}")
    if code == REENGAGEMENT_REQUIRED:
        return DeliveryRejected(f"{reason}: outside the 24-hour window; configure template_name to send it as a template")
    if error.status == 429 or error.status >= 500:
        wait = float(retry_after) if retry_after and retry_after.isdigit() else NETWORK_RETRY_S
        return RetryLater(wait, reason, rate_limited=error.status == 429)
    return DeliveryRejected(reason)


class GraphClient:
    """Graph API calls of one channel: its base URL and access token, on the shared pool.

    The token rides in the ``Authorization`` header only of requests to ``api_base_url``; it is
    never put in a URL, so request logs cannot leak it.
    """

    def __init__(self, http: httpx.AsyncClient, *, base_url: str, token: str) -> None:
        self._http = http
        self.base_url = base_url
        self._token = token

    @property
    def auth(self) -> Mapping[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    async def call(
        self, method: str, path: str, *, json: Any = None, data: Any = None, files: Any = None, timeout_s: float = 20.0
    ) -> Mapping[str, Any]:
        """One request; the JSON answer of a 2xx.

        Raises:
            RetryLater / RecipientGone / DeliveryRejected: as ``translate`` maps Meta's answer;
                RetryLater also for a network failure or a timeout (a send may have gone: one
                duplicate beats a loss).
        """
        answer = await self.attempt(method, path, json=json, data=data, files=files, timeout_s=timeout_s)
        if isinstance(answer, GraphError):
            raise translate(answer, answer.retry_after)
        return answer

    async def attempt(
        self, method: str, path: str, *, json: Any = None, data: Any = None, files: Any = None, timeout_s: float = 20.0
    ) -> Mapping[str, Any] | GraphError:
        """``call``, but Meta's error answer is returned, for a caller that acts on its code.

        Raises:
            RetryLater: the Graph API could not be reached, or answered something not JSON.
        """
        url = f"{self.base_url}/{path.lstrip('/')}"
        try:
            response = await self._http.request(
                method, url, json=json, data=data, files=files, headers=self.auth, timeout=timeout_s
            )
        except httpx.TransportError as exc:
            raise RetryLater(NETWORK_RETRY_S, f"graph API unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 300:
            error = GraphError.of(response)
            log.info("graph API %s %s answered %s (code %s)", method, path.split("?")[0], response.status_code, error.code)
            return error
        try:
            body = response.json()
        except ValueError:
            raise RetryLater(NETWORK_RETRY_S, "graph API answered a body that is not JSON") from None
        return body if isinstance(body, dict) else {}
