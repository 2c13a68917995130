"""Standard Webhooks signatures (symmetric ``v1``): HMAC-SHA256 over ``{id}.{timestamp}.{body}``
with the base64-decoded ``whsec_`` secret, ±5 minutes (docs/PLATFORMS.md §3).

Our own 40 lines rather than the ``standardwebhooks`` package: verification sits on the hot
path and needs no datetime parsing or JSON decoding; the package is used in the tests as an
independent cross-check, beside the spec's known-answer vectors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

from gateway.core.errors import SignatureInvalid

__all__ = ["TOLERANCE_S", "decode_secret", "sign", "signed_headers", "verify"]

#: Every reference library allows five minutes each way.
TOLERANCE_S = 300


def decode_secret(secret: str) -> bytes:
    """The HMAC key: the base64 after an optional ``whsec_``; missing padding is tolerated."""
    body = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a Standard Webhooks secret is 'whsec_' followed by base64") from None


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one message."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(key: bytes, msg_id: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    """The headers of a signed JSON request: id, timestamp (now unless given) and signature."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(key, msg_id, stamp, body),
    }


def verify(key: bytes, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> str:
    """Check the three headers against ``body``; returns the message id.

    Raises:
        SignatureInvalid: a header is missing, the timestamp is outside the tolerance, or no
            ``v1`` signature matches (entries of other versions are ignored, as the spec says).
    """
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise SignatureInvalid("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureInvalid("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if timestamp < current - TOLERANCE_S:
        raise SignatureInvalid("webhook-timestamp is too old")
    if timestamp > current + TOLERANCE_S:
        raise SignatureInvalid("webhook-timestamp is too new")
    expected = sign(key, msg_id, timestamp, body).encode()
    for candidate in signatures.split(" "):
        version, _, _ = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(candidate.encode(), expected):
            return msg_id
    raise SignatureInvalid("no webhook-signature matches")
