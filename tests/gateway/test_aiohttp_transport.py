"""The process's HTTP client runs httpx's API on aiohttp (issue 21): what our code relies on from
httpx still holds — requests arrive as sent, gzip is decoded, the pool is bounded and reused, an
unread response never leaves its bytes on a pooled connection, and each failure is the httpx
exception httpcore raises for it, so "may have reached the server" stays apart from "never sent"."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from gateway.core.aiohttp_transport import AiohttpTransport
from tests.support.servers import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A loopback HTTP/1.1 server scripted per connection; counts connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length) if length else b""
        self.requests.append((head, body))
        return head, body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


def _response(body: bytes, *, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n".encode()
            + extra + b"\r\n" + body)


@asynccontextmanager
async def serving(script: Callable[[RawServer, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> AsyncIterator[tuple[RawServer, str]]:
    holder: list[RawServer] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await script(holder[0], reader, writer)

    raw = RawServer(handler)
    holder.append(raw)
    server = await asyncio.start_server(raw._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield raw, f"http://127.0.0.1:{port}"


def _client(**limits: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=httpx.Limits(**limits) if limits else httpx.Limits()),
        timeout=httpx.Timeout(5.0, connect=5.0),
    )


async def keep_alive_echo(raw: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        _, body = await raw.read_request(reader)
        writer.write(_response(json.dumps({"got": len(body)}).encode()))
        await writer.drain()


async def test_request_arrives_as_sent_and_the_answer_reads_as_httpx_gives_it() -> None:
    packed = gzip.compress(b'{"status": "complete"}')

    async def script(raw: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)
        writer.write(_response(packed, extra=b"content-encoding: gzip\r\nx-multi: a\r\nx-multi: b\r\n"))

    async with serving(script) as (raw, url), _client() as http:
        response = await http.post(f"{url}/api/chat/s1/message/?q=1", json={"message": "hé"}, headers={"X-Session-Token": "t"})
        assert response.status_code == 200
        assert response.json() == {"status": "complete"}  # httpx decoded the gzip body
        assert response.headers.get_list("x-multi") == ["a", "b"]
    head, body = raw.requests[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /api/chat/s1/message/?q=1 HTTP/1.1"
    sent = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    assert sent["x-session-token"] == "t"
    assert sent["content-type"] == "application/json"
    assert sent["content-length"] == str(len(body))
    assert sent["host"] == url.removeprefix("http://")
    assert json.loads(body) == {"message": "hé"}


async def test_a_multipart_upload_arrives_whole() -> None:
    async with serving(keep_alive_echo) as (raw, url), _client() as http:
        response = await http.post(f"{url}/upload/", files={"file": ("a.png", b"\x89PNG" + b"\x00" * 5000, "image/png")})
        assert response.status_code == 200
    head, body = raw.requests[0]
    assert b"multipart/form-data; boundary=" in head
    assert b"\x89PNG" + b"\x00" * 5000 in body
    assert b"transfer-encoding" not in head.lower()


async def test_the_pool_is_bounded_and_its_connections_reused() -> None:
    async def slow_echo(raw: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await raw.read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(_response(b"{}"))
            await writer.drain()

    async with serving(slow_echo) as (raw, url), _client(max_connections=3) as http:
        answers = await asyncio.gather(*(http.get(f"{url}/x") for _ in range(12)))
        assert [a.status_code for a in answers] == [200] * 12
        assert raw.most_open <= 3
        assert raw.connections <= 3  # kept alive and reused, not one per request


async def test_an_unread_response_closes_its_connection_a_read_one_returns_it() -> None:
    big = b"x" * 200_000

    async def script(raw: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await raw.read_request(reader)
            writer.write(_response(big))
            await writer.drain()

    async with serving(script) as (raw, url), _client() as http:
        async with http.stream("GET", f"{url}/file") as response:
            async for chunk in response.aiter_bytes():
                assert chunk
                break  # a size cap stops reading here
        assert (await http.get(f"{url}/file")).content == big
        assert raw.connections == 2  # the half-read connection was not reused
        assert (await http.get(f"{url}/file")).content == big
        assert raw.connections == 2  # the fully read one was


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with _client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{free_port()}/")


async def test_a_connection_cut_after_the_request_is_a_remote_protocol_error_not_a_connect_failure() -> None:
    async def script(raw: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)  # the request arrived: the server may have acted on it

    async with serving(script) as (raw, url), _client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(f"{url}/message/", json={"message": "hi"})
    assert len(raw.requests) == 1


async def test_a_reset_after_the_request_is_a_read_error() -> None:
    async def script(raw: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)
        writer.transport.abort()  # RST, as the OCS simulator's drop_after_accept does

    async with serving(script) as (_, url), _client() as http:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await http.post(f"{url}/message/", json={"message": "hi"})


async def test_no_answer_within_the_read_timeout_is_a_read_timeout() -> None:
    async def script(raw: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)
        await asyncio.sleep(30)

    async with serving(script) as (_, url), _client() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"{url}/poll/", timeout=httpx.Timeout(5.0, read=0.3))


async def test_a_body_that_breaks_off_is_a_remote_protocol_error() -> None:
    async def script(raw: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()

    async with serving(script) as (_, url), _client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(f"{url}/file")


async def test_waiting_for_a_pooled_connection_past_the_pool_timeout_is_a_timeout() -> None:
    held = asyncio.Event()

    async def script(raw: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)
        held.set()
        await asyncio.sleep(30)  # the server's side: it never answers /hold

    async with serving(script) as (_, url), _client(max_connections=1) as http:
        holder = asyncio.create_task(http.get(f"{url}/hold"))
        # The one connection is taken once the server has /hold: a positive signal, not a yield.
        await asyncio.wait_for(held.wait(), timeout=30)
        with pytest.raises(httpx.TimeoutException):
            await http.get(f"{url}/wait", timeout=httpx.Timeout(5.0, pool=0.3))
        holder.cancel()
