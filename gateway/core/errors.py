"""The gateway's exceptions, one tree.

::

    GatewayError
    ├── ConfigError                 the configuration is wrong; start-up stops
    ├── InboundError                an HTTP request we refuse (the edge maps these to 4xx)
    │   ├── SignatureInvalid        401: missing or wrong signature, stale timestamp
    │   ├── PayloadInvalid          400: not JSON, missing fields
    │   ├── PayloadTooLarge         413
    │   └── UnknownChannel          404
    ├── StoreUnavailable            503: Redis cannot take the message; the sender retries
    ├── OCSError                    talking to Open Chat Studio
    │   ├── OCSUnavailable          5xx, timeouts, connection errors: retry with backoff
    │   ├── OCSRateLimited          429: wait ``retry_after_s``
    │   ├── SessionExpired          403 session_expired / session_token_invalid: start again
    │   │   └── SessionEnded        400 "Session has ended": OCS completed it; start again
    │   ├── OCSAuthFailed           401 on start: refresh the token once, then give up
    │   └── OCSRejected             any other 4xx: permanent, carries status and body
    ├── DeliveryError               sending to a platform
    │   ├── RetryLater              platform 429/5xx: retry after ``retry_after_s``
    │   │   └── PacingWait          our own pacing: not a failure, never counted as an attempt
    │   ├── RecipientGone           blocked, kicked, uninstalled: stop sending to them
    │   └── DeliveryRejected        a request that cannot succeed: dead letter
    ├── AttachmentUnavailable       a file cannot be fetched (too large, login page, refused)
    └── SpeechError                 the speech service (transcription, voice replies)
        ├── SpeechUnavailable       5xx, 429, timeouts, connection errors: retry after ``retry_after_s``
        ├── SpeechAuthFailed        401/403: the bot's ``speech`` key is refused; no retries
        └── SpeechRejected          any other 4xx (a format or model it refuses): permanent

Transient and permanent failures are siblings, never parent and child, so that retrying one
family never retries the other by accident (in python-telegram-bot, ``BadRequest`` subclasses
``NetworkError``, so retrying network errors there retries permanent 400s too).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

__all__ = [
    "AttachmentUnavailable",
    "ConfigError",
    "DeliveryError",
    "DeliveryRejected",
    "GatewayError",
    "InboundError",
    "LimitScope",
    "OCSAmbiguous",
    "OCSAuthFailed",
    "OCSError",
    "OCSRateLimited",
    "OCSRejected",
    "OCSUnavailable",
    "PacingWait",
    "PayloadInvalid",
    "PayloadTooLarge",
    "RecipientGone",
    "RetryLater",
    "SessionEnded",
    "SessionExpired",
    "SignatureInvalid",
    "SpeechAuthFailed",
    "SpeechError",
    "SpeechRejected",
    "SpeechUnavailable",
    "StoreUnavailable",
    "UnknownChannel",
]


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """Raised when the configuration cannot work; the message names the field and the fix."""


class InboundError(GatewayError):
    """Raised when an inbound request is refused; ``status`` is the HTTP answer."""

    status = 400


class SignatureInvalid(InboundError):
    """Raised when a request's signature, secret or timestamp does not verify."""

    status = 401


class PayloadInvalid(InboundError):
    """Raised when a request body is not what the channel documents."""

    status = 400


class PayloadTooLarge(InboundError):
    """Raised when a request body is over the configured limit."""

    status = 413


class UnknownChannel(InboundError):
    """Raised when a request names a channel that is not configured."""

    status = 404


class StoreUnavailable(GatewayError):
    """Raised when Redis cannot store an inbound message, so it must not be acknowledged."""


class OCSError(GatewayError):
    """Raised when a call to OCS fails."""


class OCSUnavailable(OCSError):
    """Raised on OCS 5xx, timeouts and connection errors: worth retrying with backoff."""


class OCSAmbiguous(OCSUnavailable):
    """Raised when a request that changes OCS state left and no answer came back (the connection
    dropped or timed out while reading): OCS may or may not have acted on it, so it must be
    settled from the session history, never simply sent again."""


class LimitScope(StrEnum):
    """Whose request limit an ``OCSRateLimited`` hit, and so who waits (the value is what logs show)."""

    #: OCS's per-session bucket: only that session's requests wait.
    SESSION = "session"
    #: OCS's per-channel limit on session starts: new sessions of that channel wait.
    STARTS = "starts"
    #: The whole service (OCS's 429 without a session or channel, the WAF's per-IP rule):
    #: every request to that OCS waits.
    SERVICE = "service"
    #: Our own shared request budget (``gateway.ocs.budget``) refused before anything was sent.
    BUDGET = "budget"


class OCSRateLimited(OCSError):
    """Raised on OCS 429, the hosted WAF's HTML 403 or our own request budget; wait
    ``retry_after_s``. ``scope`` says whose limit it was (``LimitScope``).
    """

    def __init__(
        self, retry_after_s: float, detail: str = "rate limited", *, scope: LimitScope = LimitScope.SESSION
    ) -> None:
        super().__init__(f"{detail} (retry after {retry_after_s:g} s)")
        self.retry_after_s = retry_after_s
        self.scope = scope


class SessionExpired(OCSError):
    """Raised when OCS says the session token is expired or invalid: start a new session."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class SessionEnded(SessionExpired):
    """Raised when OCS answers 400 ``{"error": "Session has ended"}``: the session was completed
    (OCS's review form, docs/OCS.md §6.1) and refuses every message from now on. OCS did not accept
    this one, so sending it in a new session is right, once; the old session is forgotten."""

    def __init__(self) -> None:
        super().__init__("session_ended")


class OCSAuthFailed(OCSError):
    """Raised when OCS refuses our credentials at chat start (401)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"OCS refused the credentials: HTTP {status} {body!r}")
        self.status = status
        self.body = body


class OCSRejected(OCSError):
    """Raised on a 4xx from OCS that retrying will not fix."""

    def __init__(self, status: int, body: Any, *, user_message: str | None = None) -> None:
        super().__init__(f"OCS rejected the request: HTTP {status} {body!r}")
        self.status = status
        self.body = body
        #: A message OCS meant for the end user (task error 400), when there is one.
        self.user_message = user_message


class DeliveryError(GatewayError):
    """Raised when a reply cannot be sent to the platform."""


class RetryLater(DeliveryError):
    """Raised when the platform asks us to wait (429) or is failing (5xx, network)."""

    #: True when the wait is our own pacing (``PacingWait``) rather than the platform failing.
    pacing = False

    def __init__(self, retry_after_s: float, reason: str = "", *, rate_limited: bool = False) -> None:
        """``rate_limited``: the platform said we send too much (HTTP 429, Telegram's flood
        control), as opposed to being down; the adapter that read the answer knows which."""
        super().__init__(f"retry after {retry_after_s:g} s: {reason}")
        self.retry_after_s = retry_after_s
        self.reason = reason
        self.rate_limited = rate_limited


class PacingWait(RetryLater):
    """Raised when a send must wait for its pacing slot (``gateway.store.pacing``): nothing failed,
    so the engine waits ``retry_after_s`` without counting an attempt."""

    pacing = True

    def __init__(self, retry_after_s: float, reason: str = "pacing") -> None:
        super().__init__(retry_after_s, reason)


class RecipientGone(DeliveryError):
    """Raised when the user blocked the bot, left, or the app was removed."""

    def __init__(self, reason: str = "", *, new_chat_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        #: Set when the chat moved (Telegram group → supergroup) rather than disappeared.
        self.new_chat_id = new_chat_id


class DeliveryRejected(DeliveryError):
    """Raised when the platform refuses a message in a way retrying cannot fix."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AttachmentUnavailable(GatewayError):
    """Raised when a file cannot be fetched (a user's from the platform, or one the bot attached
    from OCS); the text still goes on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SpeechError(GatewayError):
    """Raised when the speech service (``gateway.speech``) cannot transcribe or speak."""


class SpeechUnavailable(SpeechError):
    """Raised on a 5xx, a 429, a timeout or a connection error: try again after ``retry_after_s``
    (the service's ``Retry-After`` when it sent one)."""

    def __init__(self, retry_after_s: float, reason: str, *, rate_limited: bool = False) -> None:
        super().__init__(f"{reason} (retry after {retry_after_s:g} s)")
        self.retry_after_s = retry_after_s
        self.reason = reason
        self.rate_limited = rate_limited


class SpeechAuthFailed(SpeechError):
    """Raised when the speech service refuses the bot's key (401/403): retrying cannot help."""

    def __init__(self, bot: str, status: int) -> None:
        super().__init__(f"the speech service refused the key of bots.{bot}.speech (HTTP {status})")
        self.bot = bot
        self.status = status


class SpeechRejected(SpeechError):
    """Raised on any other 4xx: the service will not take this audio or text (its message says why)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"the speech service refused the request: HTTP {status} {message}")
        self.status = status
        self.message = message
