"""Who may use the console, and proof that a form was posted by the console itself.

Two ways in, both checked against ``admin_token`` with ``hmac.compare_digest``:

- ``Authorization: Bearer <token>`` (scripts, curl): nothing is stored, and since a browser
  never adds that header by itself, such a request needs no CSRF token;
- the login form, which sets a session cookie: signed with a key derived from the token (so
  every web replica accepts it and changing the token ends every session), ``HttpOnly``,
  ``SameSite=Strict``, ``Secure`` when ``public_url`` is https or the request came over https
  (behind a TLS proxy the request itself may read as http), limited to the console's path, and
  holding a random CSRF token that every form of the session carries back.

A POST made with the cookie is refused (403) unless its form carries the session's CSRF token
*and* its ``Origin`` (or, without one, its ``Referer``) names this console: ``public_url``'s
scheme and host when it is set (a proxy may rewrite ``Host``), else the request's ``Host``.
Either check alone would stop a cross-site form; both together also stop a page on a sibling
subdomain that learned a token.

Guessing is throttled (``FailureThrottle``): a client address that gave a wrong token
``max_failures`` times within ``window_s`` is answered 429 on every token it offers, right or
wrong, until the window passes; other addresses are unaffected.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from gateway.core.keys import Keys
from gateway.store.lua import LuaScript

__all__ = ["AdminAuth", "COOKIE_NAME", "FailureThrottle", "Session", "client_address"]

COOKIE_NAME = "ocsgw_admin"
#: A console session lasts this long after login.
SESSION_MAX_AGE_S = 12 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    """An authenticated request: ``csrf`` is None for bearer requests (no form to protect)."""

    csrf: str | None


class AdminAuth:
    """Checks credentials and issues the session cookie for one console."""

    def __init__(self, token: str, *, public_url: str | None = None) -> None:
        if not token:
            raise ValueError("admin_token must not be empty")
        self._token = token.encode()
        #: The console's own origin as browsers name it, when the operator configured it.
        self._origin = _origin(public_url) if public_url else None
        self._always_secure = self._origin is not None and self._origin[0] == "https"
        # A derived key: the cookie's signature never reveals anything usable as the token.
        key = hmac.new(self._token, b"ocsgw-admin-session-v1", hashlib.sha256).hexdigest()
        self._serializer = URLSafeTimedSerializer(key, salt="ocsgw-admin")

    def token_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    @staticmethod
    def bearer(request: Request) -> str | None:
        """The token of an ``Authorization: Bearer`` header, if the request has one."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return (value.strip() or None) if scheme.lower() == "bearer" else None

    def session(self, request: Request) -> Session | None:
        """The request's credentials, or None when it has none that hold."""
        token = self.bearer(request)
        if token is not None:
            return Session(csrf=None) if self.token_matches(token) else None
        cookie = request.cookies.get(COOKIE_NAME)
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            return None
        csrf = data.get("csrf") if isinstance(data, dict) else None
        return Session(csrf=csrf) if isinstance(csrf, str) and csrf else None

    def login(self, request: Request, response: Response) -> None:
        """Start a session on ``response`` (a fresh CSRF token each login)."""
        value = self._serializer.dumps({"csrf": secrets.token_urlsafe(32)})
        response.set_cookie(
            COOKIE_NAME, value, max_age=SESSION_MAX_AGE_S, path=_cookie_path(request), httponly=True,
            samesite="strict", secure=self._secure(request),
        )

    def logout(self, request: Request, response: Response) -> None:
        response.delete_cookie(
            COOKIE_NAME, path=_cookie_path(request), httponly=True, samesite="strict", secure=self._secure(request),
        )

    def _secure(self, request: Request) -> bool:
        return self._always_secure or request.url.scheme == "https"

    def same_origin(self, request: Request) -> bool:
        """The browser says the request comes from a page of this console (``Origin``, else
        ``Referer``): ``public_url``'s origin when set, else this ``Host``; a request naming
        neither is refused."""
        source = request.headers.get("origin") or request.headers.get("referer")
        if not source or source == "null":
            return False
        if self._origin is not None:
            return _origin(source) == self._origin
        host = request.headers.get("host", "")
        return bool(host) and urlsplit(source).netloc.lower() == host.lower()

    @staticmethod
    def csrf_matches(session: Session, given: str | None) -> bool:
        return session.csrf is not None and given is not None and hmac.compare_digest(given.encode(), session.csrf.encode())


def _cookie_path(request: Request) -> str:
    return request.scope.get("root_path") or "/"


class FailureThrottle:
    """Counts wrong tokens per client address in Redis, so every web replica shares the count.

    A fixed window: the first failure starts a counter that expires ``window_s`` later; once it
    reaches ``max_failures`` the address is refused until it expires. The count is not reset by
    a right token, so a guesser sharing an address with the operator gets no fresh tries.
    """

    def __init__(self, *, max_failures: int = 5, window_s: float = 300.0) -> None:
        if max_failures < 1 or window_s <= 0:
            raise ValueError("max_failures must be at least 1 and window_s positive")
        self.max_failures = max_failures
        self.window_s = window_s

    @staticmethod
    def key(keys: Keys, address: str) -> str:
        return keys.admin_failures(address)

    async def retry_after(self, redis: aioredis.Redis, keys: Keys, address: str) -> int:
        """Seconds until ``address`` may offer a token again; 0 when it may now."""
        async with redis.pipeline(transaction=False) as pipe:
            pipe.get(self.key(keys, address))
            pipe.pttl(self.key(keys, address))
            count, ttl_ms = await pipe.execute()
        if count is None or int(count) < self.max_failures:
            return 0
        return max(1, math.ceil((ttl_ms if ttl_ms > 0 else self.window_s * 1000) / 1000))

    async def failed(self, redis: aioredis.Redis, keys: Keys, address: str) -> int:
        """Count one wrong token from ``address``; returns the failures in its current window."""
        # One script, so a counter never exists without its expiry (a lockout for good).
        count = await _COUNT_FAILURE(redis, [self.key(keys, address)], [int(self.window_s * 1000)])
        return int(count)


_COUNT_FAILURE = LuaScript("""
local n = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
""")


def client_address(request: Request) -> str:
    """The address failures are counted under: the client's IP (the edge's proxy-headers
    middleware puts the ``X-Forwarded-For`` client there when the peer is one of
    ``forwarded_allow_ips``), an IPv6 client by its /64, since one host commonly holds a whole /64."""
    host = request.client.host if request.client else ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _origin(url: str) -> tuple[str, str, int | None]:
    """``scheme://host[:port]`` as a comparable triple (a default port written out or left off
    names the same origin)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return (scheme, "", -1)
    if port == {"http": 80, "https": 443}.get(scheme):
        port = None
    return (scheme, (parts.hostname or "").lower(), port)
