"""Attachment fetching cannot be turned inward (issue 8, SSRF): every internal spelling is refused
before any connection, redirects are re-checked hop by hop, the body is capped while it streams,
and the webhook channel still answers the text when its file is refused."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.core.errors import AttachmentUnavailable
from gateway.core.fetching import AddressPolicy, FetchLimits, SafeFetcher
from gateway.core.version import USER_AGENT
from tests.conftest import Stack, wait_for
from tests.support.servers import UvicornThread, free_port
from workers.turns import UNATTACHED_MARKER

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


class FileServer:
    """A loopback file host that records every request it sees."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []

    def app(self) -> Starlette:
        async def record(request: Request) -> None:
            self.seen.append((request.url.path, dict(request.headers)))

        async def photo(request: Request) -> Response:
            await record(request)
            return Response(PNG, media_type="image/png")

        async def hop(request: Request) -> Response:
            await record(request)
            left = int(request.path_params["n"])
            if left == 0:
                return Response(PNG, media_type="image/png")
            return RedirectResponse(f"/hop/{left - 1}", status_code=302)

        async def elsewhere(request: Request) -> Response:
            await record(request)
            return RedirectResponse(request.query_params["to"], status_code=307)

        async def no_location(request: Request) -> Response:
            await record(request)
            return Response(b"", status_code=302)

        async def endless(request: Request) -> Response:
            await record(request)

            async def chunks() -> AsyncIterator[bytes]:
                while True:  # no Content-Length and no end: only the cap can stop the reader
                    yield b"\x00" * 65536
                    await asyncio.sleep(0)

            return StreamingResponse(chunks(), media_type="application/octet-stream")

        async def declared_big(request: Request) -> Response:
            await record(request)
            return Response(b"\x00" * 2048, media_type="application/octet-stream")

        async def trickle(request: Request) -> Response:
            await record(request)

            async def chunks() -> AsyncIterator[bytes]:
                while True:
                    yield b"."
                    await asyncio.sleep(0.2)

            return StreamingResponse(chunks(), media_type="text/plain")

        async def status(request: Request) -> Response:
            await record(request)
            return Response("nope", status_code=int(request.path_params["code"]))

        return Starlette(routes=[
            Route("/photo.png", photo),
            Route("/hop/{n}", hop),
            Route("/elsewhere", elsewhere),
            Route("/no-location", no_location),
            Route("/endless", endless),
            Route("/declared-big", declared_big),
            Route("/trickle", trickle),
            Route("/status/{code}", status),
        ])  # fmt: skip


class NoContact(httpx.AsyncBaseTransport):
    """A transport that records what reached it: a refused URL must never get here."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        raise httpx.ConnectError("this test allows no connection", request=request)


@pytest.fixture
def files() -> Iterator[tuple[FileServer, int]]:
    server = FileServer()
    thread = UvicornThread(server.app())
    thread.start()
    yield server, thread.port
    thread.stop()


def _fetcher(http: httpx.AsyncClient, *allow: str, **limits: Any) -> SafeFetcher:
    return SafeFetcher(http, policy=AddressPolicy.from_allowlist(allow), limits=FetchLimits(**limits))


def _redis_port(redis_url: str) -> int:
    return urlsplit(redis_url).port or 6379


INTERNAL = [
    "http://127.0.0.1:{port}/photo.png",
    "http://localhost:{port}/photo.png",
    "http://2130706433:{port}/photo.png",
    "http://127.1:{port}/photo.png",
    "http://0x7f.1:{port}/photo.png",
    "http://[::ffff:127.0.0.1]:{port}/photo.png",
    "http://[::1]:{port}/photo.png",
    "http://127.0.0.1:{redis_port}/",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://10.0.0.1/photo.png",
    "http://192.168.1.1/",
    "http://0.0.0.0:{port}/photo.png",
    "http://[64:ff9b::7f00:1]:{port}/photo.png",
    "http://[2002:7f00:1::]:{port}/photo.png",
]


@pytest.mark.parametrize("template", INTERNAL)
async def test_internal_address_is_refused_before_any_connection(
    template: str, files: tuple[FileServer, int], redis_url: str
) -> None:
    server, port = files
    url = template.format(port=port, redis_port=_redis_port(redis_url))
    transport = NoContact()
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(AttachmentUnavailable) as refused:
            await _fetcher(http).fetch(url)
    assert transport.requests == [] and server.seen == []
    # The bot reads this reason: it must not echo the internal address back.
    assert "127.0.0.1" not in refused.value.reason and "10.0.0.1" not in refused.value.reason


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://127.0.0.1:6379/_PING", "http://user:pw@example.com/x"])
async def test_other_schemes_and_credentials_in_urls_are_refused(url: str) -> None:
    transport = NoContact()
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(AttachmentUnavailable):
            await _fetcher(http).fetch(url)
    assert transport.requests == []


async def test_allowlisted_loopback_port_is_fetched_with_user_agent_and_host(files: tuple[FileServer, int]) -> None:
    server, port = files
    async with httpx.AsyncClient() as http:
        fetched = await _fetcher(http, f"localhost:{port}").fetch(f"http://localhost:{port}/photo.png")
    assert fetched.data == PNG and fetched.content_type == "image/png"
    ((_, headers),) = server.seen
    assert headers["user-agent"] == USER_AGENT
    # Connected to the checked IP, yet the server sees the name the sender wrote.
    assert headers["host"] == f"localhost:{port}"


async def test_allowlist_with_a_port_does_not_open_the_other_ports(files: tuple[FileServer, int], redis_url: str) -> None:
    _, port = files
    transport = NoContact()
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(AttachmentUnavailable):
            await _fetcher(http, f"127.0.0.1:{port}").fetch(f"http://127.0.0.1:{_redis_port(redis_url)}/")
    assert transport.requests == []


async def test_redirect_from_an_allowed_host_to_loopback_is_refused(files: tuple[FileServer, int]) -> None:
    server, port = files
    inner = FileServer()
    with UvicornThread(inner.app()) as inner_url:
        async with httpx.AsyncClient() as http:
            with pytest.raises(AttachmentUnavailable, match="may not fetch"):
                await _fetcher(http, f"127.0.0.1:{port}").fetch(
                    f"http://127.0.0.1:{port}/elsewhere?to={inner_url}/photo.png"
                )
    assert [path for path, _ in server.seen] == ["/elsewhere"]
    assert inner.seen == []


async def test_redirects_are_followed_three_times_and_no_more(files: tuple[FileServer, int]) -> None:
    server, port = files
    async with httpx.AsyncClient() as http:
        fetcher = _fetcher(http, f"127.0.0.1:{port}")
        assert (await fetcher.fetch(f"http://127.0.0.1:{port}/hop/3")).data == PNG
        server.seen.clear()
        with pytest.raises(AttachmentUnavailable, match="more than 3"):
            await fetcher.fetch(f"http://127.0.0.1:{port}/hop/4")
    assert [path for path, _ in server.seen] == ["/hop/4", "/hop/3", "/hop/2", "/hop/1"]


async def test_redirect_without_location_is_a_failure_not_an_empty_file(files: tuple[FileServer, int]) -> None:
    _, port = files
    async with httpx.AsyncClient() as http:
        with pytest.raises(AttachmentUnavailable, match="without a Location"):
            await _fetcher(http, f"127.0.0.1:{port}").fetch(f"http://127.0.0.1:{port}/no-location")


async def test_size_cap_stops_an_endless_body_while_streaming(files: tuple[FileServer, int]) -> None:
    _, port = files
    async with httpx.AsyncClient() as http:
        with pytest.raises(AttachmentUnavailable, match="larger than"):
            await _fetcher(http, f"127.0.0.1:{port}", max_bytes=1_000_000).fetch(f"http://127.0.0.1:{port}/endless")


async def test_declared_length_over_the_per_call_cap_is_refused(files: tuple[FileServer, int]) -> None:
    _, port = files
    async with httpx.AsyncClient() as http:
        fetcher = _fetcher(http, f"127.0.0.1:{port}")
        with pytest.raises(AttachmentUnavailable, match="larger than"):
            await fetcher.fetch(f"http://127.0.0.1:{port}/declared-big", max_bytes=1024)
        assert len((await fetcher.fetch(f"http://127.0.0.1:{port}/declared-big")).data) == 2048


async def test_whole_fetch_has_one_time_limit(files: tuple[FileServer, int]) -> None:
    _, port = files
    async with httpx.AsyncClient() as http:
        with pytest.raises(AttachmentUnavailable, match="too long"):
            await _fetcher(http, f"127.0.0.1:{port}", timeout_s=0.5).fetch(f"http://127.0.0.1:{port}/trickle")


@pytest.mark.parametrize("code", [403, 404, 500, 503])
async def test_http_error_status_is_unavailable(code: int, files: tuple[FileServer, int]) -> None:
    _, port = files
    async with httpx.AsyncClient() as http:
        with pytest.raises(AttachmentUnavailable, match=str(code)):
            await _fetcher(http, f"127.0.0.1:{port}").fetch(f"http://127.0.0.1:{port}/status/{code}")


async def test_host_down_is_unavailable() -> None:
    port = free_port()  # nothing listens there
    async with httpx.AsyncClient() as http:
        with pytest.raises(AttachmentUnavailable, match="could not be reached"):
            await _fetcher(http, f"127.0.0.1:{port}").fetch(f"http://127.0.0.1:{port}/photo.png")


# -- https: the certificate is checked against the name although we dial the IP ------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    config = uvicorn.Config(
        FileServer().app(), host="127.0.0.1", port=port, log_level="warning", ssl_certfile=str(cert), ssl_keyfile=str(key)
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="the TLS file server")
    yield port, cert
    server.should_exit = True
    thread.join(timeout=10)


async def test_https_is_pinned_to_the_checked_ip_and_verified_for_the_name(tls_files: tuple[int, Path]) -> None:
    port, cert = tls_files
    trust = ssl.create_default_context(cafile=str(cert))
    async with httpx.AsyncClient(verify=trust) as http:
        fetcher = _fetcher(http, f"localhost:{port}", f"127.0.0.1:{port}")
        assert (await fetcher.fetch(f"https://localhost:{port}/photo.png")).data == PNG
        # The certificate names localhost, not 127.0.0.1: verification is still on.
        with pytest.raises(AttachmentUnavailable):
            await fetcher.fetch(f"https://127.0.0.1:{port}/photo.png")


# -- end to end: the webhook channel -----------------------------------------------------------


def test_attachment_pointing_at_redis_is_refused_and_the_text_still_answered(stack: Stack) -> None:
    redis_port = _redis_port(stack.redis_url)
    url = f"http://127.0.0.1:{redis_port}/dump.rdb"
    response = stack.say("ssrf", "here is my file", extra={"attachments": [{"url": url}]})
    assert response.status_code == 200
    notice, reply = wait_for(lambda: len(t := stack.receiver.texts("ssrf")) == 2 and t, what="the notice and the reply")
    assert "dump.rdb" in notice and reply.startswith("Echo #1: here is my file")
    (session,) = stack.sim.state.list_sessions()
    (sent,) = stack.sim.state.user_messages(session.id)
    # The bot hears of a file and nothing more: not why, not where it pointed.
    assert sent == f"here is my file\n{UNATTACHED_MARKER}"
    assert str(redis_port) not in notice
    assert stack.sim.state.uploaded_files() == []


def test_allowlisted_file_host_reaches_ocs(make_stack: Any) -> None:
    server = FileServer()
    with UvicornThread(server.app()) as files_url:
        port = urlsplit(files_url).port
        stack = make_stack(fetch_allowlist=(f"127.0.0.1:{port}",))
        stack.say("ok", "see photo", extra={"attachments": [{"url": f"{files_url}/photo.png"}]})
        wait_for(lambda: stack.receiver.texts("ok"), what="a reply")
    (uploaded,) = stack.sim.state.uploaded_files()
    assert uploaded.data == PNG and uploaded.name == "photo.png"
    ((_, headers),) = server.seen
    assert headers["user-agent"] == USER_AGENT


def test_getaddrinfo_normalises_the_odd_spellings_we_test() -> None:
    """The refusals above rely on the resolver reading these as 127.0.0.1 (inet_aton rules)."""
    for spelling in ("2130706433", "127.1", "0x7f.1"):
        assert {info[4][0] for info in socket.getaddrinfo(spelling, 80, type=socket.SOCK_STREAM)} == {"127.0.0.1"}
