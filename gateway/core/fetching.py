"""Fetching a file from a URL someone else wrote, without letting them point us inward.

A webhook sender chooses its attachment URLs, so a plain GET would let anyone who can sign a
message read the gateway's own network (Redis on loopback, the cloud metadata service at
169.254.169.254, private hosts) and have the answer uploaded to OCS as "their" file. Before any
connection the host is resolved and every address it resolves to is checked: loopback, private,
link-local, multicast, reserved, unspecified and other non-global ranges are refused, also when
they hide inside IPv6 (IPv4-mapped, 6to4, Teredo, NAT64), unless ``fetch_allowlist`` names them.

The request then goes to the address that was checked (the IP in the URL, the name in ``Host``
and, for https, in SNI), so a second DNS answer cannot swap in another address (DNS rebinding).
Redirects are followed here, at most ``max_redirects``, each hop checked the same way. The body is
streamed against a size cap, and the whole fetch against one time limit.

Every failure is ``AttachmentUnavailable`` with a short reason meant for the bot (it never names
an internal address); the details go to the log.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import httpx

from gateway.core.errors import AttachmentUnavailable
from gateway.core.version import USER_AGENT

__all__ = [
    "AddressPolicy",
    "AllowEntry",
    "Credentials",
    "DEFAULT_MAX_BYTES",
    "FetchLimits",
    "FetchedFile",
    "SafeFetcher",
    "fetch_url",
]

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: OCS takes files up to 50 MB (docs/OCS.md §3.3); fetching more would only fail later.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*\.?$")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """One ``fetch_allowlist`` entry: a network or a host name, optionally with one port."""

    network: IPNetwork | None = None
    hostname: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        """``10.0.0.0/8``, ``127.0.0.1``, ``::1``, ``files.internal``, each optionally with a
        port: ``127.0.0.1:8080``, ``[::1]:8080``, ``files.internal:8443``.

        Raises:
            ValueError: not a CIDR, an address or a host name.
        """
        raw = text.strip().lower()
        port: int | None = None
        if raw.startswith("["):  # [v6]:port or [v6]
            inside, _, rest = raw[1:].partition("]")
            raw = inside
            if rest:
                port = _port(rest.removeprefix(":"), text)
        elif raw.count(":") == 1:  # host:port or v4:port (a bare v6 has several colons)
            raw, _, port_text = raw.partition(":")
            port = _port(port_text, text)
        try:
            return cls(network=ipaddress.ip_network(raw, strict=False), port=port)
        except ValueError:
            pass
        if not _HOSTNAME.match(raw) or raw.replace(".", "").isdigit():
            raise ValueError(f"fetch_allowlist entry {text!r} is not a CIDR, an IP address or a host name")
        return cls(hostname=raw.rstrip("."), port=port)

    def allows(self, hostname: str, address: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.hostname is not None:
            return self.hostname == hostname
        assert self.network is not None
        return address.version == self.network.version and address in self.network


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which resolved addresses a fetch may connect to."""

    allow: tuple[AllowEntry, ...] = ()

    @classmethod
    def from_allowlist(cls, entries: Iterable[str]) -> AddressPolicy:
        """Raises:
        ValueError: an entry that is not a CIDR, address or host name.
        """
        return cls(tuple(AllowEntry.parse(e) for e in entries))

    def permits(self, hostname: str, address: IPAddress, port: int) -> bool:
        if any(entry.allows(hostname, address, port) for entry in self.allow):
            return True
        return not _internal(address)


def _internal(address: IPAddress) -> bool:
    """True for anything that is not a plain public unicast address, including IPv4 addresses
    wrapped in IPv6 forms that some stacks route to the embedded IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded: list[ipaddress.IPv4Address] = []
        if address.ipv4_mapped is not None:
            embedded.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            embedded.append(address.sixtofour)
        if address.teredo is not None:
            embedded.extend(address.teredo)
        if any(address in net for net in _NAT64):
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(_internal(inner) for inner in embedded):
            return True
        if address.ipv4_mapped is not None or any(address in net for net in _NAT64):
            return False  # a mapped or NAT64-translated public IPv4 address is that address
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"fetch_allowlist entry {entry!r} has a bad port")
    return int(text)


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """Bounds on one fetch: the body size, the whole time (all hops) and the redirect hops."""

    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = 120.0
    max_redirects: int = 3


@dataclass(frozen=True, slots=True)
class Credentials:
    """Headers (a platform's token) that go with a fetch only to the given origins, each
    ``(scheme, host, port)``: a redirect or a URL elsewhere is fetched without them, so a URL a
    payload names can never collect the token."""

    headers: Mapping[str, str] = field(repr=False)
    origins: frozenset[tuple[str, str, int]]

    @classmethod
    def for_origins(cls, headers: Mapping[str, str], urls: Iterable[str]) -> Credentials:
        """``urls``: the origins as URLs (``https://lookaside.fbsbx.com``, a base URL with a path)."""
        origins: set[tuple[str, str, int]] = set()
        for url in urls:
            parsed = httpx.URL(url)
            origins.add((parsed.scheme, parsed.host.lower(), parsed.port or (443 if parsed.scheme == "https" else 80)))
        return cls(dict(headers), frozenset(origins))

    def allows(self, scheme: str, hostname: str, port: int) -> bool:
        return (scheme, hostname, port) in self.origins


@dataclass(frozen=True, slots=True)
class FetchedFile:
    """What a fetch returns: the bytes, the type the server gave (or None) and the final URL."""

    url: str
    content_type: str | None
    data: bytes = field(repr=False)


class SafeFetcher:
    """GETs a URL through the address checks, on the given client (which it does not close)."""

    def __init__(
        self, http: httpx.AsyncClient, *, policy: AddressPolicy = AddressPolicy(), limits: FetchLimits = FetchLimits()
    ) -> None:
        self._http = http
        self._policy = policy
        self._limits = limits

    async def fetch(self, url: str, *, max_bytes: int | None = None, credentials: Credentials | None = None) -> FetchedFile:
        """Fetch ``url``; ``max_bytes`` lowers the configured cap for this call; ``credentials``
        go with each hop to one of their origins, and with no other.

        Raises:
            AttachmentUnavailable: refused address or scheme, unreachable, timed out, too big,
                an HTTP error status, a redirect without Location or too many redirects.
        """
        cap = min(max_bytes or self._limits.max_bytes, self._limits.max_bytes)
        try:
            async with asyncio.timeout(self._limits.timeout_s):
                return await self._follow(url, cap, credentials)
        except TimeoutError:
            log.info("attachment fetch timed out after %gs: %s", self._limits.timeout_s, _loggable(url))
            raise AttachmentUnavailable("the file took too long to download") from None

    async def _follow(self, url: str, cap: int, credentials: Credentials | None) -> FetchedFile:
        current = _parse(url)
        for hop in range(self._limits.max_redirects + 1):
            status, location, fetched = await self._get(current, cap, credentials)
            if fetched is not None:
                return fetched
            if location is None:
                raise AttachmentUnavailable(f"the file URL answered a redirect ({status}) without a Location")
            if hop == self._limits.max_redirects:
                break
            try:
                current = _parse(str(current.join(location)))
            except (httpx.InvalidURL, ValueError):
                raise AttachmentUnavailable("the file URL redirected to an invalid address") from None
        raise AttachmentUnavailable(f"the file URL redirected more than {self._limits.max_redirects} times")

    async def _get(
        self, url: httpx.URL, cap: int, credentials: Credentials | None = None
    ) -> tuple[int, str | None, FetchedFile | None]:
        """One hop: (status, Location, None) for a redirect, else (status, None, the file)."""
        # The ASCII (punycode) form: what DNS, the Host header and the allowlist all compare.
        hostname = url.raw_host.decode("ascii").lower().rstrip(".")
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await self._resolve(hostname, port)
        refused = [a for a in addresses if not self._policy.permits(hostname, a, port)]
        if refused:
            # Any internal answer refuses the host: trying only the public ones would still let
            # a name with mixed answers steer us on another resolver or after a retry.
            log.warning("attachment fetch refused: %s resolves to %s", _loggable(str(url)), ", ".join(map(str, refused)))
            raise AttachmentUnavailable("the file URL points to an address the gateway may not fetch from")
        last_error: Exception | None = None
        for address in addresses:
            request = self._pinned_request(url, address, hostname, port)
            if credentials is not None and credentials.allows(url.scheme, hostname, port):
                request.headers.update(credentials.headers)
            try:
                response = await self._http.send(request, stream=True, follow_redirects=False)
            except httpx.ConnectError as exc:
                last_error = exc
                continue
            except httpx.HTTPError as exc:
                log.info("attachment fetch failed: %s: %s", _loggable(str(url)), type(exc).__name__)
                raise AttachmentUnavailable("the file host could not be reached") from exc
            try:
                return await self._read(url, response, cap)
            finally:
                await response.aclose()
        log.info("attachment fetch failed: %s: %s", _loggable(str(url)), type(last_error).__name__)
        raise AttachmentUnavailable("the file host could not be reached") from last_error

    async def _read(self, url: httpx.URL, response: httpx.Response, cap: int) -> tuple[int, str | None, FetchedFile | None]:
        status = response.status_code
        if status in _REDIRECTS:
            return status, response.headers.get("location") or None, None
        if status != 200:
            # 1xx/204/206 and other 2xx/3xx are not "here is the whole file" either.
            raise AttachmentUnavailable(f"the file URL answered HTTP {status}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise AttachmentUnavailable(f"the file is larger than {_megabytes(cap)}")
        data = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                data.extend(chunk)
                if len(data) > cap:
                    raise AttachmentUnavailable(f"the file is larger than {_megabytes(cap)}")
        except httpx.HTTPError as exc:
            log.info("attachment fetch broke off: %s: %s", _loggable(str(url)), type(exc).__name__)
            raise AttachmentUnavailable("the file download broke off") from exc
        content_type = response.headers.get("content-type", "").split(";")[0].strip() or None
        return status, None, FetchedFile(url=str(url), content_type=content_type, data=bytes(data))

    async def _resolve(self, hostname: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            log.info("attachment host %r does not resolve: %s", hostname, exc)
            raise AttachmentUnavailable("the file host name does not resolve") from None
        addresses: list[IPAddress] = []
        for family, *_, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            # Drop a scope id ("fe80::1%eth0"): the checks are about the address itself.
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise AttachmentUnavailable("the file host name does not resolve")
        return addresses

    def _pinned_request(self, url: httpx.URL, address: IPAddress, hostname: str, port: int) -> httpx.Request:
        default_port = 443 if url.scheme == "https" else 80
        name = f"[{hostname}]" if isinstance(_literal(hostname), ipaddress.IPv6Address) else hostname
        host_header = name if port == default_port else f"{name}:{port}"
        extensions: dict[str, object] = {}
        if url.scheme == "https" and _literal(hostname) is None:
            extensions["sni_hostname"] = hostname  # the certificate is checked against the name
        return self._http.build_request(
            "GET",
            url.copy_with(host=str(address), port=port),
            # Connection: close, so that a pooled connection verified for one name (same IP) is
            # never reused for another: each hop gets its own handshake and certificate check.
            headers={"Host": host_header, "User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"},
            extensions=extensions,
        )


async def fetch_url(
    url: str,
    *,
    allowlist: Iterable[str] = (),
    limits: FetchLimits = FetchLimits(),
    max_bytes: int | None = None,
    credentials: Credentials | None = None,
) -> FetchedFile:
    """Fetch ``url`` on a client of its own, so a stranger's server shares neither cookies nor
    pooled connections with OCS and platform calls, and no proxy from the environment can
    undo the address pinning.

    Raises:
        AttachmentUnavailable: as ``SafeFetcher.fetch``.
    """
    try:
        policy = AddressPolicy.from_allowlist(allowlist)
    except ValueError as exc:
        raise AttachmentUnavailable("the gateway's fetch_allowlist is not valid") from exc
    timeout = httpx.Timeout(min(30.0, limits.timeout_s), connect=10.0)
    async with httpx.AsyncClient(
        timeout=timeout, trust_env=False, headers={"User-Agent": USER_AGENT}, verify=_tls_context()
    ) as http:
        return await SafeFetcher(http, policy=policy, limits=limits).fetch(url, max_bytes=max_bytes, credentials=credentials)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Built once per process: loading the CA bundle is most of a new client's cost (~35 ms of
    ~40 ms measured); the context is not changed after it is made."""
    return httpx.create_ssl_context()


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise AttachmentUnavailable("the file URL is not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise AttachmentUnavailable("the file URL must be http or https")
    if not parsed.host:
        raise AttachmentUnavailable("the file URL has no host")
    if parsed.userinfo:
        raise AttachmentUnavailable("the file URL may not carry a user name or password")
    return parsed


def _literal(hostname: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(hostname)
    except ValueError:
        return None


def _loggable(url: str) -> str:
    """The URL without its query (it may carry someone's signed-link token)."""
    return url.split("?", 1)[0]


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:g} MB"
