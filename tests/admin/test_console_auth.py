"""The console lets in only the holder of ``admin_token``, a guesser gets a handful of tries per
address and window, a form posted from anywhere but the console itself changes nothing (behind
a TLS proxy too), and each letter says what its replay will do (httpx against the real edge; no
browser needed)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.config_loading import GatewayConfig
from gateway.core.config import Secret
from gateway.core.errors import ConfigError
from gateway.core.models import ConversationKey, Inbound, InboundKind
from gateway.edge.admin.app import create_admin_app
from gateway.edge.admin.auth import FailureThrottle
from gateway.services import Services
from gateway.store.dead_letters import STAGE_OCS, DeadLetterStore
from tests.admin.conftest import (
    ADMIN_TOKEN,
    KEYS,
    csrf_of,
    login,
    make_dead_letter,
    run,
)
from tests.conftest import SimServer, Stack, stack_config, wait_for

HTML = {"Accept": "text/html,application/xhtml+xml"}


def test_the_console_is_not_mounted_without_an_admin_token(stack: Stack) -> None:
    assert stack.http.get(f"{stack.url}/admin/", headers=HTML).status_code == 404
    assert stack.http.get(f"{stack.url}/admin/api/summary").status_code == 404


def test_without_credentials_a_script_gets_401_and_a_browser_the_login_page(console: Stack) -> None:
    api = console.http.get(f"{console.url}/admin/api/summary")
    assert api.status_code == 401
    assert api.headers["www-authenticate"].startswith("Bearer")
    page = console.http.get(f"{console.url}/admin/", headers=HTML, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/admin/login"
    assert "admin token" in console.http.get(f"{console.url}/admin/login").text


def test_a_post_without_credentials_is_refused_and_does_nothing(console: Stack) -> None:
    letter_id = make_dead_letter(console)
    for action in ("drop", "replay"):
        response = console.http.post(f"{console.url}/admin/dead-letters/{letter_id}/{action}",
                                     headers={"Origin": console.url, **HTML})
        assert response.status_code == 401
    assert console.redis.exists(KEYS.dead_letter(letter_id))


def test_a_wrong_token_is_refused_by_header_and_by_the_form(console: Stack) -> None:
    wrong = ADMIN_TOKEN[:-1] + ("0" if ADMIN_TOKEN[-1] != "0" else "1")
    assert console.http.get(f"{console.url}/admin/api/summary",
                            headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
    form = console.http.post(f"{console.url}/admin/login", data={"token": wrong}, headers={"Origin": console.url})
    assert form.status_code == 401 and "not right" in form.text
    assert "set-cookie" not in form.headers


def test_the_bearer_token_reads_the_summary_as_json(console: Stack) -> None:
    response = console.http.get(f"{console.url}/admin/api/summary", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200
    summary = response.json()
    assert [c["name"] for c in summary["channels"]] == ["hooks"]
    assert summary["dead_letters_total"] == 0


def test_login_sets_an_httponly_samesite_strict_cookie_for_the_console_only(console: Stack) -> None:
    client = httpx.Client(base_url=console.url, timeout=10)
    response = client.post("/admin/login", data={"token": ADMIN_TOKEN}, headers={"Origin": console.url})
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower() and "path=/admin" in cookie.lower()
    assert "secure" not in attributes  # plain http here; see the https case below
    assert ADMIN_TOKEN not in cookie
    overview = client.get("/admin/", headers=HTML)
    assert overview.status_code == 200 and "Turns in flight" in overview.text


def test_the_cookie_is_secure_when_the_request_came_over_https(console: Stack) -> None:
    # uvicorn trusts X-Forwarded-Proto from loopback, as from the TLS proxy in front of it.
    response = console.http.post(f"{console.url}/admin/login", data={"token": ADMIN_TOKEN},
                                 headers={"Origin": "https://" + console.url.split("://")[1], "X-Forwarded-Proto": "https"})
    assert response.status_code == 303
    assert "secure" in {part.strip().lower() for part in response.headers["set-cookie"].split(";")}


def test_a_cross_site_post_is_refused_and_the_letter_stays(console: Stack) -> None:
    letter_id = make_dead_letter(console)
    client = login(console)
    csrf = csrf_of(client.get("/admin/dead-letters", headers=HTML).text)
    drop = f"/admin/dead-letters/{letter_id}/drop"
    # Another site's form: the browser sends the cookie (were it not SameSite) and its own Origin.
    evil = client.post(drop, data={"csrf": csrf}, headers={"Origin": "https://evil.example", **HTML})
    assert evil.status_code == 403
    evil_referer = client.post(drop, data={"csrf": csrf}, headers={"Referer": "https://evil.example/x", **HTML})
    assert evil_referer.status_code == 403
    no_token = client.post(drop, data={}, headers={"Origin": console.url, **HTML})
    assert no_token.status_code == 403
    forged = client.post(drop, data={"csrf": csrf[::-1]}, headers={"Origin": console.url, **HTML})
    assert forged.status_code == 403
    assert console.redis.exists(KEYS.dead_letter(letter_id))
    # The same form from the console itself goes through: the refusals above were the checks.
    ours = client.post(drop, data={"csrf": csrf}, headers={"Origin": console.url, **HTML})
    assert ours.status_code == 303 and "dropped" in ours.headers["location"]
    assert not console.redis.exists(KEYS.dead_letter(letter_id))


def test_a_login_form_posted_from_another_site_is_refused(console: Stack) -> None:
    response = console.http.post(f"{console.url}/admin/login", data={"token": ADMIN_TOKEN},
                                 headers={"Origin": "https://evil.example"})
    assert response.status_code == 403 and "set-cookie" not in response.headers


def test_logging_out_ends_the_session(console: Stack) -> None:
    client = login(console)
    csrf = csrf_of(client.get("/admin/", headers=HTML).text)
    out = client.post("/admin/logout", data={"csrf": csrf}, headers={"Origin": console.url})
    assert out.status_code == 303
    assert client.get("/admin/api/summary").status_code == 401


def test_pages_forbid_framing_and_scripts(console: Stack) -> None:
    client = login(console)
    headers = client.get("/admin/", headers=HTML).headers
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src" not in headers["content-security-policy"]  # default-src 'none' covers scripts
    assert headers["cache-control"] == "no-store"


def test_a_session_from_another_token_is_not_accepted(console: Stack, make_stack: Callable[..., Stack]) -> None:
    other = make_stack(admin_token=Secret("a-different-admin-token-0123456789"))
    client = login(console)
    cookie = client.cookies.get("ocsgw_admin")
    assert cookie
    response = httpx.get(f"{other.url}/admin/api/summary", cookies={"ocsgw_admin": cookie}, timeout=10)
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


def test_a_letters_content_is_escaped_not_rendered(console: Stack) -> None:
    letter_id = make_dead_letter(console, conversation="c-xss", text='<img src=x onerror="alert(1)">')
    page = login(console).get(f"/admin/dead-letters/{letter_id}", headers=HTML).text
    assert "<img src=x" not in page
    assert "&lt;img src=x" in page


# -- guessing ------------------------------------------------------------------------------------

WRONG = ADMIN_TOKEN[:-1] + ("0" if ADMIN_TOKEN[-1] != "0" else "1")
#: Two client addresses, as uvicorn reads them from a proxy it trusts (loopback here).
GUESSER = {"X-Forwarded-For": "203.0.113.66"}
OPERATOR = {"X-Forwarded-For": "198.51.100.7"}


def test_a_short_admin_token_is_refused_at_load_with_how_to_make_one() -> None:
    with pytest.raises(ConfigError) as refused:
        GatewayConfig.from_mapping({"admin_token": Secret("x" * 23)})
    assert "admin_token" in str(refused.value) and "at least 24 characters" in str(refused.value)
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in str(refused.value)
    assert "x" * 23 not in str(refused.value)
    assert GatewayConfig.from_mapping({"admin_token": Secret("x" * 24)}).admin_token is not None


def test_the_sixth_login_after_five_wrong_ones_is_429_even_with_the_right_token(console: Stack) -> None:
    url = f"{console.url}/admin/login"
    for _ in range(5):
        wrong = console.http.post(url, data={"token": WRONG}, headers={"Origin": console.url, **GUESSER})
        assert wrong.status_code == 401
    right = console.http.post(url, data={"token": ADMIN_TOKEN}, headers={"Origin": console.url, **GUESSER})
    assert right.status_code == 429 and "set-cookie" not in right.headers
    assert 0 < int(right.headers["retry-after"]) <= 300
    assert "Too many wrong tokens" in right.text
    # The bearer header from the same address waits too; the counter expires with its window.
    bearer = console.http.get(f"{console.url}/admin/api/summary",
                              headers={"Authorization": f"Bearer {ADMIN_TOKEN}", **GUESSER})
    assert bearer.status_code == 429
    key = FailureThrottle.key(KEYS, "203.0.113.66")
    assert console.redis.get(key) == b"5" and 0 < console.redis.pttl(key) <= 300_000
    # Another address is unaffected, by the form and by the header.
    theirs = console.http.post(url, data={"token": ADMIN_TOKEN}, headers={"Origin": console.url, **OPERATOR})
    assert theirs.status_code == 303
    assert console.http.get(f"{console.url}/admin/api/summary",
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", **OPERATOR}).status_code == 200


def test_wrong_bearer_tokens_count_like_wrong_logins(console: Stack) -> None:
    summary = f"{console.url}/admin/api/summary"
    for _ in range(5):
        assert console.http.get(summary, headers={"Authorization": f"Bearer {WRONG}", **GUESSER}).status_code == 401
    refused = console.http.get(summary, headers={"Authorization": f"Bearer {ADMIN_TOKEN}", **GUESSER})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    login_form = console.http.post(f"{console.url}/admin/login", data={"token": ADMIN_TOKEN},
                                   headers={"Origin": console.url, **GUESSER})
    assert login_form.status_code == 429
    assert console.http.get(summary, headers={"Authorization": f"Bearer {ADMIN_TOKEN}", **OPERATOR}).status_code == 200


async def test_a_throttled_address_may_log_in_again_once_its_window_passes(redis_url: str, sim: SimServer) -> None:
    config = stack_config(sim.url, "http://127.0.0.1:9", admin_token=Secret(ADMIN_TOKEN))
    services = await Services.open(config, redis_url)
    # A short window (the real one is 5 minutes) so the test can see it pass.
    app = create_admin_app(config, lambda: services, throttle=FailureThrottle(max_failures=2, window_s=1.5))
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
    headers = {"Origin": "http://gw"}
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            for _ in range(2):
                assert (await client.post("/login", data={"token": WRONG}, headers=headers)).status_code == 401
            locked = await client.post("/login", data={"token": ADMIN_TOKEN}, headers=headers)
            assert locked.status_code == 429 and 0 < int(locked.headers["retry-after"]) <= 2
            deadline = time.monotonic() + 15
            while (answer := await client.post("/login", data={"token": ADMIN_TOKEN}, headers=headers)).status_code == 429:
                assert time.monotonic() < deadline, "the address was still refused long after its window"
                await asyncio.sleep(0.1)
            assert answer.status_code == 303
    finally:
        await services.aclose()


# -- behind a TLS proxy --------------------------------------------------------------------------

PUBLIC = "https://gw.example.test"


def test_behind_a_tls_proxy_the_cookie_is_secure_and_forms_must_come_from_public_url(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(admin_token=Secret(ADMIN_TOKEN), public_url=PUBLIC)
    letter_id = make_dead_letter(stack)
    url = f"{stack.url}/admin/login"
    # The proxy spoke plain http to us and kept its own Host: the request's Host is not the origin.
    for foreign in (stack.url, "http://gw.example.test", "https://evil.example"):
        refused = stack.http.post(url, data={"token": ADMIN_TOKEN}, headers={"Origin": foreign})
        assert refused.status_code == 403 and "set-cookie" not in refused.headers, foreign
    response = stack.http.post(url, data={"token": ADMIN_TOKEN}, headers={"Origin": PUBLIC})
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "secure" in {part.strip().lower() for part in cookie.split(";")}  # though this request was http
    assert stack.http.post(url, data={"token": ADMIN_TOKEN}, headers={"Origin": PUBLIC + ":443"}).status_code == 303
    # A form of the session: judged by the public origin too (Referer when there is no Origin).
    session = {"Cookie": cookie.split(";")[0], **HTML}
    csrf = csrf_of(stack.http.get(f"{stack.url}/admin/dead-letters", headers=session).text)
    drop = f"{stack.url}/admin/dead-letters/{letter_id}/drop"
    assert stack.http.post(drop, data={"csrf": csrf}, headers={"Origin": stack.url, **session}).status_code == 403
    assert stack.redis.exists(KEYS.dead_letter(letter_id))
    ours = stack.http.post(drop, data={"csrf": csrf}, headers={"Referer": f"{PUBLIC}/admin/dead-letters", **session})
    assert ours.status_code == 303 and not stack.redis.exists(KEYS.dead_letter(letter_id))


def test_public_url_over_http_leaves_the_cookie_as_the_request_came(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(admin_token=Secret(ADMIN_TOKEN), public_url="http://gw.example.test")
    response = stack.http.post(f"{stack.url}/admin/login", data={"token": ADMIN_TOKEN},
                               headers={"Origin": "http://gw.example.test"})
    assert response.status_code == 303
    assert "secure" not in {part.strip().lower() for part in response.headers["set-cookie"].split(";")}


# -- what a replay will do -----------------------------------------------------------------------


async def _park_ocs_letter(redis_url: str, conversation: str, text: str, ledger_state: str, task_id: str) -> str:
    """A letter as the worker parks a turn that failed at the OCS stage (workers/turns.py)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        conv = ConversationKey("hooks", conversation)
        inbound = Inbound(key=conv, event_id=f"ev-{uuid.uuid4().hex}", kind=InboundKind.MESSAGE,
                          sender_id=f"user-{conversation}", text=text, route={"conversation_id": conversation})
        letter = await DeadLetterStore(client, KEYS).park(
            conv, inbound.to_json(), error="OCS task poll failed", stage=STAGE_OCS,
            ocs={"session_id": "s-1" if task_id else "", "task_id": task_id},
            ledger={"turn": uuid.uuid4().hex, "state": ledger_state, "attempts": 5, "delivered": 0},
        )
        return letter.id
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
