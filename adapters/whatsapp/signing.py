"""Meta's two webhook checks (docs/WHATSAPP.md, "Webhooks"): the GET verification handshake and
the ``X-Hub-Signature-256`` header on every POST.

The signature is ``sha256=`` and the hex HMAC-SHA256 of the raw body with the app secret; it is
checked on the exact bytes received, before any parsing, and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from gateway.core.errors import SignatureInvalid

__all__ = ["SIGNATURE_HEADER", "check_handshake", "sign", "verify"]

SIGNATURE_HEADER = "x-hub-signature-256"


def sign(app_secret: str, body: bytes) -> str:
    """The header value Meta sends for ``body``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def verify(app_secret: str, headers: Mapping[str, str], body: bytes) -> None:
    """Raises:
    SignatureInvalid: the header is missing, malformed, or does not match the body.
    """
    given = headers.get(SIGNATURE_HEADER, "")
    if not given.startswith("sha256="):
        raise SignatureInvalid("missing or malformed X-Hub-Signature-256 header")
    if not hmac.compare_digest(given.strip().lower().encode(), sign(app_secret, body).encode()):
        raise SignatureInvalid("X-Hub-Signature-256 does not match the body")


def check_handshake(query: Mapping[str, str], verify_token: str) -> str:
    """The ``hub.challenge`` to echo when ``hub.mode`` is ``subscribe`` and ``hub.verify_token``
    is ours (compared in constant time).

    Raises:
        SignatureInvalid: another mode, or the wrong token (the route answers 403).
    """
    if query.get("hub.mode") != "subscribe":
        raise SignatureInvalid("hub.mode is not subscribe")
    token = query.get("hub.verify_token", "")
    if not hmac.compare_digest(token.encode(), verify_token.encode()):
        raise SignatureInvalid("hub.verify_token does not match the channel's verify_token")
    return query.get("hub.challenge", "")
