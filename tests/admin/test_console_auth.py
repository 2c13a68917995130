"""The console lets in only the holder of ``admin_token``, a guesser gets a handful of tries per
address and window, a form posted from anywhere but the console itself changes nothing (behind
a TLS proxy too), and each letter says what its replay will do. Who gets in is the console's
own business: those tests drive it in process over a real Redis (``console_app``); only the
replays, which must reach OCS and the platform, run a whole stack (httpx, no browser)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.config_loading import GatewayConfig
from gateway.core.config import Secret
from gateway.core.errors import ConfigError
from gateway.edge.admin.auth import FailureThrottle
from gateway.edge.app import create_app
from tests.admin.conftest import (
    ADMIN_TOKEN,
    CONSOLE,
    KEYS,
    NOWHERE,
    ConsoleApp,
    console_in_process,
    csrf_of,
    login,
    make_dead_letter,
    park_ocs_letter,
    run,
    served_in_process,
)
from tests.conftest import Stack, stack_config, wait_for

HTML = {"Accept": "text/html,application/xhtml+xml"}
SAME_ORIGIN = {"Origin": CONSOLE}
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@contextlib.asynccontextmanager
async def logged_in(console: ConsoleApp, address: str = "192.0.2.10") -> AsyncIterator[httpx.AsyncClient]:
    """A client holding a console session (logged in through the form, as a browser would)."""
    async with console.client(address) as client:
        response = await client.post("/admin/login", data={"token": ADMIN_TOKEN}, headers=SAME_ORIGIN)
        assert response.status_code == 303, response.text
        yield client


async def test_the_console_is_not_mounted_without_an_admin_token(redis_url: str) -> None:
    config = stack_config(NOWHERE, NOWHERE)
    async with served_in_process(create_app(config, redis_url)) as client_from, client_from("192.0.2.10") as client:
        assert (await client.get("/admin/", headers=HTML)).status_code == 404
        assert (await client.get("/admin/api/summary")).status_code == 404
        assert (await client.get("/readyz")).status_code == 200  # the edge itself serves


async def test_without_credentials_a_script_gets_401_and_a_browser_the_login_page(console_app: ConsoleApp) -> None:
    async with console_app.client() as client:
        api = await client.get("/admin/api/summary")
        assert api.status_code == 401
        assert api.headers["www-authenticate"].startswith("Bearer")
        page = await client.get("/admin/", headers=HTML, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/admin/login"
        assert "admin token" in (await client.get("/admin/login")).text


async def test_a_post_without_credentials_is_refused_and_does_nothing(console_app: ConsoleApp) -> None:
    letter_id = await console_app.park_letter()
    async with console_app.client() as client:
        for action in ("drop", "replay"):
            response = await client.post(f"/admin/dead-letters/{letter_id}/{action}", headers={**SAME_ORIGIN, **HTML})
            assert response.status_code == 401
    assert await console_app.redis.exists(KEYS.dead_letter(letter_id))


async def test_a_wrong_token_is_refused_by_header_and_by_the_form(console_app: ConsoleApp) -> None:
    async with console_app.client() as client:
        header = await client.get("/admin/api/summary", headers={"Authorization": f"Bearer {WRONG}"})
        assert header.status_code == 401
        form = await client.post("/admin/login", data={"token": WRONG}, headers=SAME_ORIGIN)
        assert form.status_code == 401 and "not right" in form.text
        assert "set-cookie" not in form.headers


async def test_the_bearer_token_reads_the_summary_as_json(console_app: ConsoleApp) -> None:
    async with console_app.client() as client:
        response = await client.get("/admin/api/summary", headers=BEARER)
    assert response.status_code == 200
    summary = response.json()
    assert [c["name"] for c in summary["channels"]] == ["hooks"]
    assert summary["dead_letters_total"] == 0


async def test_login_sets_an_httponly_samesite_strict_cookie_for_the_console_only(console_app: ConsoleApp) -> None:
    async with console_app.client() as client:
        response = await client.post("/admin/login", data={"token": ADMIN_TOKEN}, headers=SAME_ORIGIN)
        assert response.status_code == 303
        cookie = response.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite", "path", "max-age"} <= attributes
        assert "samesite=strict" in cookie.lower() and "path=/admin" in cookie.lower()
        assert "secure" not in attributes  # plain http here; see the https case below
        assert ADMIN_TOKEN not in cookie
        overview = await client.get("/admin/", headers=HTML)
        assert overview.status_code == 200 and "Turns in flight" in overview.text


async def test_the_cookie_is_secure_when_the_request_came_over_https(console_app: ConsoleApp) -> None:
    # Over https itself; the same through a trusted TLS proxy's X-Forwarded-Proto is below.
    async with console_app.client(scheme="https") as client:
        response = await client.post("/admin/login", data={"token": ADMIN_TOKEN}, headers={"Origin": "https://gw"})
    assert response.status_code == 303
    assert "secure" in {part.strip().lower() for part in response.headers["set-cookie"].split(";")}


async def test_a_cross_site_post_is_refused_and_the_letter_stays(console_app: ConsoleApp) -> None:
    letter_id = await console_app.park_letter()
    async with logged_in(console_app) as client:
        csrf = csrf_of((await client.get("/admin/dead-letters", headers=HTML)).text)
        drop = f"/admin/dead-letters/{letter_id}/drop"
        # Another site's form: the browser sends the cookie (were it not SameSite) and its own Origin.
        evil = await client.post(drop, data={"csrf": csrf}, headers={"Origin": "https://evil.example", **HTML})
        assert evil.status_code == 403
        evil_referer = await client.post(drop, data={"csrf": csrf}, headers={"Referer": "https://evil.example/x", **HTML})
        assert evil_referer.status_code == 403
        no_token = await client.post(drop, data={}, headers={**SAME_ORIGIN, **HTML})
        assert no_token.status_code == 403
        forged = await client.post(drop, data={"csrf": csrf[::-1]}, headers={**SAME_ORIGIN, **HTML})
        assert forged.status_code == 403
        assert await console_app.redis.exists(KEYS.dead_letter(letter_id))
        # The same form from the console itself goes through: the refusals above were the checks.
        ours = await client.post(drop, data={"csrf": csrf}, headers={**SAME_ORIGIN, **HTML})
        assert ours.status_code == 303 and "dropped" in ours.headers["location"]
    assert not await console_app.redis.exists(KEYS.dead_letter(letter_id))


async def test_a_login_form_posted_from_another_site_is_refused(console_app: ConsoleApp) -> None:
    async with console_app.client() as client:
        response = await client.post("/admin/login", data={"token": ADMIN_TOKEN}, headers={"Origin": "https://evil.example"})
    assert response.status_code == 403 and "set-cookie" not in response.headers


async def test_logging_out_ends_the_session(console_app: ConsoleApp) -> None:
    async with logged_in(console_app) as client:
        csrf = csrf_of((await client.get("/admin/", headers=HTML)).text)
        out = await client.post("/admin/logout", data={"csrf": csrf}, headers=SAME_ORIGIN)
        assert out.status_code == 303
        assert (await client.get("/admin/api/summary")).status_code == 401


async def test_pages_forbid_framing_and_scripts(console_app: ConsoleApp) -> None:
    async with logged_in(console_app) as client:
        headers = (await client.get("/admin/", headers=HTML)).headers
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src" not in headers["content-security-policy"]  # default-src 'none' covers scripts
    assert headers["cache-control"] == "no-store"


async def test_a_session_from_another_token_is_not_accepted(console_app: ConsoleApp, redis_url: str) -> None:
    async with logged_in(console_app) as client:
        cookie = client.cookies.get("ocsgw_admin")
    assert cookie
    other_token = Secret("a-different-admin-token-0123456789")
    async with console_in_process(redis_url, admin_token=other_token) as other, other.client() as stranger:
        response = await stranger.get("/admin/api/summary", headers={"Cookie": f"ocsgw_admin={cookie}"})
    assert response.status_code == 401


def test_a_letter_page_shows_its_content_and_a_bearer_replay_answers_json(console: Stack) -> None:
    letter_id = make_dead_letter(console, conversation="c-show", text="where is my order?")
    client = login(console)
    page = client.get(f"/admin/dead-letters/{letter_id}", headers=HTML)
    assert page.status_code == 200
    assert "where is my order?" in page.text  # the operator asked to see the letter's content
    assert "Echo #1: where is my order?" in page.text  # the answer that was not delivered
    assert "where is my order?" not in client.get("/admin/", headers=HTML).text  # never on the overview
    assert client.get("/admin/dead-letters/nope", headers=HTML).status_code == 404
    replay = console.http.post(f"{console.url}/admin/dead-letters/{letter_id}/replay",
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert replay.status_code == 200 and replay.json() == {"ok": True, "done": f"replayed {letter_id}"}
    assert wait_for(lambda: console.receiver.texts("c-show"), what="the replayed answer") == ["Echo #1: where is my order?"]


async def test_a_letters_content_is_escaped_not_rendered(console_app: ConsoleApp) -> None:
    letter_id = await console_app.park_letter("c-xss", '<img src=x onerror="alert(1)">')
    async with logged_in(console_app) as client:
        page = (await client.get(f"/admin/dead-letters/{letter_id}", headers=HTML)).text
    assert "<img src=x" not in page
    assert "&lt;img src=x" in page


# -- guessing ------------------------------------------------------------------------------------

WRONG = ADMIN_TOKEN[:-1] + ("0" if ADMIN_TOKEN[-1] != "0" else "1")
#: Two client addresses, as a proxy the edge trusts names them.
GUESSER = {"X-Forwarded-For": "203.0.113.66"}
OPERATOR = {"X-Forwarded-For": "198.51.100.7"}


def test_a_short_admin_token_is_refused_at_load_with_how_to_make_one() -> None:
    with pytest.raises(ConfigError) as refused:
        GatewayConfig.from_mapping({"admin_token": Secret("x" * 23)})
    assert "admin_token" in str(refused.value) and "at least 24 characters" in str(refused.value)
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in str(refused.value)
    assert "x" * 23 not in str(refused.value)
    assert GatewayConfig.from_mapping({"admin_token": Secret("x" * 24)}).admin_token is not None


async def test_the_sixth_login_after_five_wrong_ones_is_429_even_with_the_right_token(console_app: ConsoleApp) -> None:
    async with console_app.client("203.0.113.66") as guesser, console_app.client("198.51.100.7") as operator:
        for _ in range(5):
            wrong = await guesser.post("/admin/login", data={"token": WRONG}, headers=SAME_ORIGIN)
            assert wrong.status_code == 401
        right = await guesser.post("/admin/login", data={"token": ADMIN_TOKEN}, headers=SAME_ORIGIN)
        assert right.status_code == 429 and "set-cookie" not in right.headers
        assert 0 < int(right.headers["retry-after"]) <= 300
        assert "Too many wrong tokens" in right.text
        # The bearer header from the same address waits too; the counter expires with its window.
        assert (await guesser.get("/admin/api/summary", headers=BEARER)).status_code == 429
        key = FailureThrottle.key(KEYS, "203.0.113.66")
        assert await console_app.redis.get(key) == b"5" and 0 < await console_app.redis.pttl(key) <= 300_000
        # Another address is unaffected, by the form and by the header.
        theirs = await operator.post("/admin/login", data={"token": ADMIN_TOKEN}, headers=SAME_ORIGIN)
        assert theirs.status_code == 303
        assert (await operator.get("/admin/api/summary", headers=BEARER)).status_code == 200


async def test_wrong_bearer_tokens_count_like_wrong_logins(console_app: ConsoleApp) -> None:
    async with console_app.client("203.0.113.66") as guesser, console_app.client("198.51.100.7") as operator:
        for _ in range(5):
            assert (await guesser.get("/admin/api/summary", headers={"Authorization": f"Bearer {WRONG}"})).status_code == 401
        refused = await guesser.get("/admin/api/summary", headers=BEARER)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        login_form = await guesser.post("/admin/login", data={"token": ADMIN_TOKEN}, headers=SAME_ORIGIN)
        assert login_form.status_code == 429
        assert (await operator.get("/admin/api/summary", headers=BEARER)).status_code == 200


async def test_a_throttled_address_may_log_in_again_once_its_window_passes(redis_url: str) -> None:
    # A short window (the real one is 5 minutes) so the test can see it pass.
    throttle = FailureThrottle(max_failures=2, window_s=1.5)
    async with console_in_process(redis_url, throttle=throttle) as console, console.client("203.0.113.9") as client:
        for _ in range(2):
            assert (await client.post("/admin/login", data={"token": WRONG}, headers=SAME_ORIGIN)).status_code == 401
        locked = await client.post("/admin/login", data={"token": ADMIN_TOKEN}, headers=SAME_ORIGIN)
        assert locked.status_code == 429 and 0 < int(locked.headers["retry-after"]) <= 2
        deadline = time.monotonic() + 15
        while (answer := await client.post("/admin/login", data={"token": ADMIN_TOKEN}, headers=SAME_ORIGIN)).status_code == 429:
            assert time.monotonic() < deadline, "the address was still refused long after its window"
            await asyncio.sleep(0.1)
        assert answer.status_code == 303


#: A proxy's network the tests configure as trusted, and a proxy in it.
PROXIES = "10.20.30.0/24"
PROXY = "10.20.30.40"


def _secure(response: httpx.Response) -> bool:
    return "secure" in {part.strip().lower() for part in response.headers["set-cookie"].split(";")}


async def test_behind_a_trusted_proxy_one_clients_wrong_tokens_do_not_lock_out_another(redis_url: str) -> None:
    config = stack_config(NOWHERE, NOWHERE, admin_token=Secret(ADMIN_TOKEN), forwarded_allow_ips=[PROXIES])
    async with served_in_process(create_app(config, redis_url)) as client_from, client_from(PROXY) as proxy:
        for _ in range(5):
            wrong = await proxy.post("/admin/login", data={"token": WRONG}, headers={**SAME_ORIGIN, **GUESSER})
            assert wrong.status_code == 401
        locked = await proxy.post("/admin/login", data={"token": ADMIN_TOKEN}, headers={**SAME_ORIGIN, **GUESSER})
        assert locked.status_code == 429
        # Every client comes through the same proxy: the operator is another address all the same.
        theirs = await proxy.post("/admin/login", data={"token": ADMIN_TOKEN},
                                  headers={**SAME_ORIGIN, **OPERATOR, "X-Forwarded-Proto": "https"})
        assert theirs.status_code == 303
        assert _secure(theirs)  # the proxy's word on the scheme is believed too
        assert (await proxy.get("/admin/api/summary", headers={**BEARER, **OPERATOR})).status_code == 200


async def test_an_untrusted_peer_cannot_dodge_the_throttle_by_forging_x_forwarded_for(redis_url: str) -> None:
    config = stack_config(NOWHERE, NOWHERE, admin_token=Secret(ADMIN_TOKEN), forwarded_allow_ips=[PROXIES])
    # Loopback is not trusted once forwarded_allow_ips names the proxies; neither is anyone else.
    for peer in ("192.0.2.50", "127.0.0.1"):
        async with served_in_process(create_app(config, redis_url)) as client_from, client_from(peer) as direct:
            claims_https = await direct.post("/admin/login", data={"token": ADMIN_TOKEN},
                                             headers={**SAME_ORIGIN, "X-Forwarded-Proto": "https"})
            assert claims_https.status_code == 303 and not _secure(claims_https)
            for i in range(5):
                forged = {"X-Forwarded-For": f"198.51.100.{10 + i}"}  # a fresh "client" each guess
                wrong = await direct.post("/admin/login", data={"token": WRONG}, headers={**SAME_ORIGIN, **forged})
                assert wrong.status_code == 401
            right = await direct.post("/admin/login", data={"token": ADMIN_TOKEN},
                                      headers={**SAME_ORIGIN, "X-Forwarded-For": "198.51.100.99"})
            assert right.status_code == 429
    redis = aioredis.Redis.from_url(redis_url)
    try:
        assert await redis.get(FailureThrottle.key(KEYS, "192.0.2.50")) == b"5"
        assert await redis.get(FailureThrottle.key(KEYS, "198.51.100.10")) is None
    finally:
        await redis.aclose()


def test_forwarded_allow_ips_defaults_to_loopback_and_refuses_what_is_no_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    assert GatewayConfig.from_mapping({}).forwarded_allow_ips == ("127.0.0.1", "::1")
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "172.16.0.0/12, 192.0.2.1")  # uvicorn's variable, as before
    assert GatewayConfig.from_mapping({}).forwarded_allow_ips == ("172.16.0.0/12", "192.0.2.1")
    assert GatewayConfig.from_mapping({"forwarded_allow_ips": [PROXIES]}).forwarded_allow_ips == (PROXIES,)
    with pytest.raises(ConfigError) as refused:  # uvicorn would trust nobody for it, silently
        GatewayConfig.from_mapping({"forwarded_allow_ips": ["10.20.30.40/24"]})
    assert "10.20.30.40/24" in str(refused.value) and "IP address or network" in str(refused.value)


# -- behind a TLS proxy --------------------------------------------------------------------------

PUBLIC = "https://gw.example.test"


async def test_behind_a_tls_proxy_the_cookie_is_secure_and_forms_must_come_from_public_url(redis_url: str) -> None:
    async with console_in_process(redis_url, public_url=PUBLIC) as console, console.client() as client:
        letter_id = await console.park_letter()
        # The proxy spoke plain http to us and kept its own Host: the request's Host is not the origin.
        for foreign in (CONSOLE, "http://gw.example.test", "https://evil.example"):
            refused = await client.post("/admin/login", data={"token": ADMIN_TOKEN}, headers={"Origin": foreign})
            assert refused.status_code == 403 and "set-cookie" not in refused.headers, foreign
        response = await client.post("/admin/login", data={"token": ADMIN_TOKEN}, headers={"Origin": PUBLIC})
        assert response.status_code == 303
        assert _secure(response)  # though this request was http
        default_port = await client.post("/admin/login", data={"token": ADMIN_TOKEN}, headers={"Origin": PUBLIC + ":443"})
        assert default_port.status_code == 303
        # A form of the session: judged by the public origin too (Referer when there is no Origin).
        session = {"Cookie": response.headers["set-cookie"].split(";")[0], **HTML}
        csrf = csrf_of((await client.get("/admin/dead-letters", headers=session)).text)
        drop = f"/admin/dead-letters/{letter_id}/drop"
        assert (await client.post(drop, data={"csrf": csrf}, headers={**SAME_ORIGIN, **session})).status_code == 403
        assert await console.redis.exists(KEYS.dead_letter(letter_id))
        ours = await client.post(drop, data={"csrf": csrf}, headers={"Referer": f"{PUBLIC}/admin/dead-letters", **session})
        assert ours.status_code == 303 and not await console.redis.exists(KEYS.dead_letter(letter_id))


async def test_public_url_over_http_leaves_the_cookie_as_the_request_came(redis_url: str) -> None:
    async with console_in_process(redis_url, public_url="http://gw.example.test") as console, console.client() as client:
        response = await client.post("/admin/login", data={"token": ADMIN_TOKEN},
                                     headers={"Origin": "http://gw.example.test"})
    assert response.status_code == 303
    assert not _secure(response)


# -- what a replay will do -----------------------------------------------------------------------


async def _park_ocs_letter(redis_url: str, conversation: str, text: str, ledger_state: str, task_id: str) -> str:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await park_ocs_letter(client, conversation, text, ledger_state, task_id)
    finally:
        await client.aclose()


def test_a_delivery_letter_says_its_replay_re_delivers_the_stored_answer(console: Stack) -> None:
    letter_id = make_dead_letter(console, conversation="c-deliver")
    client = login(console)
    page = client.get(f"/admin/dead-letters/{letter_id}", headers=HTML).text
    assert "re-delivers the answer stored with this letter; OCS is not asked again" in page
    assert "asks OCS again" not in page
    assert "Replay: re-delivers the stored answer" in client.get("/admin/dead-letters", headers=HTML).text


def test_an_ocs_letter_says_its_replay_asks_ocs_again_and_whether_ocs_had_it(console: Stack) -> None:
    had_it = run(_park_ocs_letter(console.redis_url, "c-had", "did you get this?", "sent", "task-41"))
    never = run(_park_ocs_letter(console.redis_url, "c-never", "hello there", "received", ""))
    maybe = run(_park_ocs_letter(console.redis_url, "c-maybe", "anyone?", "sending", ""))
    client = login(console)
    had_page = client.get(f"/admin/dead-letters/{had_it}", headers=HTML).text
    assert "Replay sends the message to OCS again" in had_page
    assert "OCS had already received it" in had_page and "OCS will see it twice" in had_page
    never_page = client.get(f"/admin/dead-letters/{never}", headers=HTML).text
    assert "Replay sends the message to OCS again" in never_page and "never reached OCS" in never_page
    assert "OCS may already have received it" in client.get(f"/admin/dead-letters/{maybe}", headers=HTML).text
    listing = client.get("/admin/dead-letters", headers=HTML).text
    assert "Replay: asks OCS again; OCS already had it" in listing and "Replay: asks OCS again; OCS may have it" in listing
    # And it does what it says: the replay sends the message to OCS, whose answer is delivered.
    replay = console.http.post(f"{console.url}/admin/dead-letters/{had_it}/replay",
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert replay.status_code == 200
    assert wait_for(lambda: console.receiver.texts("c-had"), what="the answer to the replayed message") == [
        "Echo #1: did you get this?"
    ]
