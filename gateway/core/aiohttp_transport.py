"""httpx's API on aiohttp's connection pool: an ``httpx.AsyncBaseTransport`` over one
``aiohttp.ClientSession``.

Why: at 16 concurrent requests httpx's own pool (httpcore) spends several times aiohttp's CPU per
request (``bench/bench_http.py``, docs/PERFORMANCE.md, issue 21), and the OCS client is most of a
turn's CPU. Our code and its tests keep httpx's client, requests, responses and exceptions; only
the layer under ``AsyncClient.send`` changes.

Why our own and not the ``httpx-aiohttp`` package: it maps every ``aiohttp.ClientConnectionError``
(a server that drops the connection after reading the request among them) to
``httpx.ConnectTimeout``, which says "never sent". The OCS client must tell "may have reached OCS"
(``ReadError``, ``RemoteProtocolError``, ``ReadTimeout``: a user message is then ambiguous) from
"never left" (``ConnectError``, ``ConnectTimeout``/``PoolTimeout``); ``_translated`` keeps that
line where httpcore draws it.

What carries over from ``httpx.AsyncClient``: headers (httpx sets Host, Accept-Encoding and the
rest; aiohttp adds none of its own that we did not send), decompression (httpx decodes, aiohttp
hands the raw bytes), cookies (httpx's jar; aiohttp's is a dummy), redirects (httpx follows or
not; aiohttp never), streaming (the body is read as it arrives; closing an unread response closes
its connection instead of returning it to the pool), the timeouts of each request (connect →
``sock_connect``, read → ``sock_read``, pool → aiohttp's ``connect``, which is the wait for a pooled
connection plus the connect) and the pool size (``max_connections`` → the connector's ``limit``).
An httpx write timeout has no aiohttp counterpart (request bodies here are small and buffered).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx

__all__ = ["AiohttpTransport"]

#: httpx's default keep-alive expiry (seconds): how long an idle pooled connection is kept.
_KEEPALIVE_S = 5.0
_CHUNK = 64 * 1024


class _Body(httpx.AsyncByteStream):
    """The response body as aiohttp reads it; ``aclose`` gives the connection back (read to the
    end) or closes it (not read to the end)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                yield chunk
        except aiohttp.ClientError as exc:
            raise _translated(exc) from exc
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out reading the response") from exc

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # back to the pool
        else:
            self._response.close()  # unread bytes would be the next response's start: never reuse


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Give it to ``httpx.AsyncClient(transport=…)``; the session is made on first use, on the
    running loop (aiohttp binds a session to its loop), and closed with the client.

    Parameters:
        limits: ``max_connections`` bounds the pool (None: unbounded); ``keepalive_expiry`` is
            how long an idle connection is kept (default: httpx's defaults).
        verify: the TLS context for https (default: httpx's, the same CA bundle).
    """

    def __init__(self, *, limits: httpx.Limits | None = None, verify: ssl.SSLContext | None = None) -> None:
        self._limits = limits if limits is not None else httpx.Limits()
        self._verify = verify
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            limit_per_host=0,
            keepalive_timeout=self._limits.keepalive_expiry if self._limits.keepalive_expiry is not None else _KEEPALIVE_S,
            ssl=self._verify if self._verify is not None else httpx.create_ssl_context(),
        )
        # No cookie jar, no default headers, no decompression: httpx does each once, above us.
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None or self._session.closed:
            self._session = self._open()
        timeout = request.extensions.get("timeout", {})
        client_timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout.get("pool"), sock_connect=timeout.get("connect"), sock_read=timeout.get("read"),
        )
        body = await request.aread()  # httpx has it in memory already, multipart uploads too
        sni = request.extensions.get("sni_hostname")
        # The body goes whole, with its Content-Length: a chunked framing httpx chose for a stream does not apply.
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "transfer-encoding"]
        try:
            response = await self._session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=client_timeout,
                server_hostname=sni if isinstance(sni, str) else None,
            )
        except aiohttp.ClientError as exc:
            raise _translated(exc) from exc
        except TimeoutError as exc:
            raise httpx.PoolTimeout(str(exc) or "timed out waiting for a connection") from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode("latin-1", "replace")},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _translated(exc: aiohttp.ClientError) -> httpx.TransportError:
    """The httpx exception httpcore would raise for the same failure; the order matters, most
    specific first. "Never sent" only where aiohttp had no connection to send on."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # sock_read: the request was sent
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, TLS handshake: never sent
        return httpx.ConnectError(message)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message)  # the body broke off (httpcore: incomplete read)
    if isinstance(exc, aiohttp.ClientResponseError):  # a response aiohttp could not parse
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message)
    # Anything else on an open connection (a reset while writing or reading): it may have been sent.
    return httpx.ReadError(message)
