"""Reply attachments (issue 15): OCS's credentials go to OCS's own origin and nowhere else, also
across redirects; a file elsewhere is fetched without them and through the address checks; the
body is capped before (Content-Length) and while it streams. The text-still-goes side is in
tests/workers/test_attachments.py and the adapters' tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.core.config import BotConfig, Secret
from gateway.core.errors import AttachmentUnavailable, OCSUnavailable
from gateway.core.keys import Keys
from gateway.ocs.client import OCSClient
from tests.support.servers import UvicornThread

BASE = "https://ocs.test"
CHATBOT = "6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23"
TOKEN = "bearer-for-files-only"
API_KEY = "key-for-files-only"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
CAP = 1024


class Counted(httpx.AsyncByteStream):
    """A body that records how much of it was pulled: a refused file must not be read."""

    def __init__(self, chunks: int, size: int = 512) -> None:
        self.left, self.size, self.pulled = chunks, size, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.left:
            self.left -= 1
            self.pulled += 1
            yield b"\x00" * self.size


@dataclass
class FakeOCS:
    """OCS's origin, in process: its token endpoint and file routes, recording what reached it."""

    foreign: str = ""
    seen: list[httpx.Request] = field(default_factory=list)
    bodies: dict[str, Counted] = field(default_factory=dict)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        path = request.url.path
        if path == "/o/token/":
            return httpx.Response(200, json={"access_token": TOKEN, "expires_in": 36000})
        if path == "/api/files/1/content":
            return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})
        if path == "/away":  # OCS sends the download elsewhere (a signed storage link, say)
            return httpx.Response(302, headers={"location": f"{self.foreign}/photo.png"})
        if path == "/moved":
            return httpx.Response(301, headers={"location": "/api/files/1/content"})
        if path == "/declared-big":
            body = self.bodies["declared-big"] = Counted(chunks=40)
            return httpx.Response(200, headers={"content-length": str(40 * 512)}, stream=body)
        if path == "/undeclared-big":
            body = self.bodies["undeclared-big"] = Counted(chunks=40)
            return httpx.Response(200, stream=body)
        if path == "/lying":
            body = self.bodies["lying"] = Counted(chunks=40)
            return httpx.Response(200, headers={"content-length": "100"}, stream=body)
        if path.startswith("/status/"):
            return httpx.Response(int(path.rsplit("/", 1)[1]), json={"detail": "no"})
        return httpx.Response(404, json={"detail": "Not found."})

    def credentials(self, path: str) -> list[tuple[str | None, str | None]]:
        return [(r.headers.get("authorization"), r.headers.get("x-api-key")) for r in self.seen if r.url.path == path]


@dataclass
class ForeignHost:
    """Another origin on loopback (its own port): records the headers of every request."""

    seen: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def photo(request: Request) -> Response:
            self.seen.append(dict(request.headers))
            return Response(PNG, media_type="image/png")

        async def big(request: Request) -> Response:
            self.seen.append(dict(request.headers))
            return Response(b"\x00" * (CAP * 2), media_type="application/octet-stream")

        return Starlette(routes=[Route("/photo.png", photo), Route("/big", big)])


@pytest.fixture
def foreign() -> Iterator[tuple[ForeignHost, str]]:
    host = ForeignHost()
    with UvicornThread(host.app()) as url:
        yield host, url


@pytest.fixture
async def make_client(redis_url: str) -> AsyncIterator[Any]:
    """``make_client(ocs, auth="oauth"|"api_key", allow=(...))``: a client whose OCS origin is
    ``ocs`` (in process); anything else goes out over the network as in production."""
    redis = aioredis.Redis.from_url(redis_url)
    clients: list[httpx.AsyncClient] = []

    def build(ocs: FakeOCS, *, auth: str = "oauth", allow: tuple[str, ...] = (), base_url: str = BASE) -> OCSClient:
        http = httpx.AsyncClient(transport=httpx.MockTransport(ocs.handle))
        clients.append(http)
        if auth == "oauth":
            bot = BotConfig(base_url=base_url, chatbot_id=CHATBOT, client_id="app", client_secret=Secret("s"), max_file_bytes=CAP)
        else:
            bot = BotConfig(base_url=base_url, chatbot_id=CHATBOT, auth="keyless", api_key=Secret(API_KEY), max_file_bytes=CAP)
        return OCSClient(name=f"dl-{auth}", bot=bot, http=http, redis=redis, keys=Keys(f"dl-{auth}"), fetch_allowlist=allow)

    yield build
    for http in clients:
        await http.aclose()
    await redis.aclose()


def _no_credentials(headers: dict[str, str]) -> bool:
    return "authorization" not in headers and "x-api-key" not in headers


# -- who gets the credentials ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "expected"), [("oauth", (f"Bearer {TOKEN}", None)), ("api_key", (None, API_KEY))]
)
@pytest.mark.parametrize("url", [f"{BASE}/api/files/1/content", "https://OCS.test:443/api/files/1/content"])
async def test_a_file_on_ocss_origin_is_fetched_with_the_bots_credentials(
    make_client: Any, auth: str, expected: tuple[str | None, str | None], url: str
) -> None:
    ocs = FakeOCS()
    client = make_client(ocs, auth=auth)
    assert await client.download_file(url) == PNG
    assert ocs.credentials("/api/files/1/content") == [expected]


@pytest.mark.parametrize("auth", ["oauth", "api_key"])
async def test_a_file_on_another_origin_is_fetched_without_credentials(
    make_client: Any, foreign: tuple[ForeignHost, str], auth: str
) -> None:
    host, url = foreign
    ocs = FakeOCS()
    client = make_client(ocs, auth=auth, allow=(url.removeprefix("http://"),))
    assert await client.download_file(f"{url}/photo.png") == PNG
    (headers,) = host.seen
    assert _no_credentials(headers)
    assert ocs.seen == []  # not even a token was fetched for it


@pytest.mark.parametrize(
    "url",
    [
        "http://ocs.test/api/files/1/content",  # another scheme
        "https://ocs.test:8443/api/files/1/content",  # another port
        "https://files.ocs.test/api/files/1/content",  # a sub-domain is another origin too
        "https://user@ocs.test/api/files/1/content",  # a user name in the URL
    ],
)
async def test_a_url_that_only_looks_like_ocss_gets_no_credentials(make_client: Any, url: str) -> None:
    ocs = FakeOCS()
    client = make_client(ocs)
    with pytest.raises(AttachmentUnavailable):  # fetched as a stranger's URL: .test does not resolve
        await client.download_file(url)
    assert ocs.seen == []


async def test_a_foreign_file_on_an_internal_address_is_refused_before_any_connection(
    make_client: Any, foreign: tuple[ForeignHost, str]
) -> None:
    host, url = foreign
    client = make_client(FakeOCS())  # no fetch_allowlist: loopback is internal
    with pytest.raises(AttachmentUnavailable, match="may not fetch"):
        await client.download_file(f"{url}/photo.png")
    assert host.seen == []


@pytest.mark.parametrize("auth", ["oauth", "api_key"])
async def test_a_redirect_from_ocs_to_another_origin_does_not_carry_the_credentials(
    make_client: Any, foreign: tuple[ForeignHost, str], auth: str
) -> None:
    host, url = foreign
    ocs = FakeOCS(foreign=url)
    client = make_client(ocs, auth=auth, allow=(url.removeprefix("http://"),))
    assert await client.download_file(f"{BASE}/away") == PNG
    assert len(ocs.credentials("/away")) == 1
    (headers,) = host.seen
    assert _no_credentials(headers)


async def test_a_redirect_from_ocs_to_an_internal_address_is_refused(make_client: Any, foreign: tuple[ForeignHost, str]) -> None:
    host, url = foreign
    client = make_client(FakeOCS(foreign=url))
    with pytest.raises(AttachmentUnavailable, match="may not fetch"):
        await client.download_file(f"{BASE}/away")
    assert host.seen == []


async def test_a_redirect_within_ocss_origin_keeps_the_credentials(make_client: Any) -> None:
    ocs = FakeOCS()
    client = make_client(ocs, auth="api_key")
    assert await client.download_file(f"{BASE}/moved") == PNG
    assert ocs.credentials("/api/files/1/content") == [(None, API_KEY)]


# -- the size cap ------------------------------------------------------------------------------------


async def test_a_declared_length_over_the_cap_is_refused_without_reading_the_body(make_client: Any) -> None:
    ocs = FakeOCS()
    client = make_client(ocs)
    with pytest.raises(AttachmentUnavailable, match="larger than 1024 bytes"):
        await client.download_file(f"{BASE}/declared-big")
    assert ocs.bodies["declared-big"].pulled == 0


@pytest.mark.parametrize("path", ["undeclared-big", "lying"])
async def test_a_body_that_streams_past_the_cap_is_cut_off(make_client: Any, path: str) -> None:
    ocs = FakeOCS()
    client = make_client(ocs)
    with pytest.raises(AttachmentUnavailable, match="larger than 1024 bytes"):
        await client.download_file(f"{BASE}/{path}")
    # Three 512-byte chunks pass 1024: the other 37 are never read.
    assert ocs.bodies[path].pulled == 3


async def test_a_foreign_file_over_the_cap_is_refused(make_client: Any, foreign: tuple[ForeignHost, str]) -> None:
    _, url = foreign
    client = make_client(FakeOCS(), allow=(url.removeprefix("http://"),))
    with pytest.raises(AttachmentUnavailable, match="larger than"):
        await client.download_file(f"{url}/big")


# -- what failures mean to the caller ---------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_a_file_ocs_will_not_give_is_unavailable_not_a_failed_turn(make_client: Any, status: int) -> None:
    client = make_client(FakeOCS())
    with pytest.raises(AttachmentUnavailable, match=str(status)):
        await client.download_file(f"{BASE}/status/{status}")


async def test_ocs_failing_while_serving_a_file_is_worth_a_retry(make_client: Any) -> None:
    client = make_client(FakeOCS())
    with pytest.raises(OCSUnavailable):
        await client.download_file(f"{BASE}/status/503")
