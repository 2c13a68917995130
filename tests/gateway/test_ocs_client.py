"""The OCS client against the simulator: what goes over the wire, and how each failure is
translated (docs/OCS.md §2, §4, §7)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.core.config import BotConfig, Secret
from gateway.core.errors import (
    LimitScope,
    OCSAmbiguous,
    OCSAuthFailed,
    OCSRateLimited,
    OCSRejected,
    OCSUnavailable,
    SessionEnded,
    SessionExpired,
)
from gateway.core.keys import Keys
from gateway.core.version import USER_AGENT
from gateway.ocs.budget import RequestBudget
from gateway.ocs.client import _LOOKUP_PAGE, OCSClient, labelled_remote_id
from gateway.ocs.messages import MessageRole, SessionStatus, TaskStatus
from gateway.ocs.simulator import (
    DEMO_CHATBOT_ID,
    SimChatbot,
    SimulatorKnobs,
    SimulatorState,
    create_simulator_app,
)
from tests.conftest import SimServer

BASE = "http://ocs.test"


@pytest.fixture
def state() -> SimulatorState:
    return SimulatorState.demo(BASE, SimulatorKnobs(reply_latency_s=0.0))


@pytest.fixture
async def wire(state: SimulatorState, redis_url: str) -> AsyncIterator[tuple[OCSClient, list[httpx.Request]]]:
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_simulator_app(state)), event_hooks={"request": [record]})
    redis = aioredis.Redis.from_url(redis_url)
    bot = BotConfig(base_url=BASE, chatbot_id=DEMO_CHATBOT_ID, client_id="demo-client", client_secret=Secret("demo-secret"))
    yield OCSClient(name="demo", bot=bot, http=http, redis=redis, keys=Keys()), sent
    await http.aclose()
    await redis.aclose()


async def test_start_sends_bearer_and_user_agent_but_never_origin_or_referer(wire) -> None:
    client, sent = wire
    session = await client.start_session(remote_id="telegram:42", name="Ada")
    start = next(r for r in sent if r.url.path == "/api/chat/start/")
    assert start.headers["authorization"].startswith("Bearer ")
    assert start.headers["user-agent"] == USER_AGENT
    assert "origin" not in start.headers and "referer" not in start.headers
    assert session.session_token


async def test_session_calls_send_the_session_token_and_no_credentials(wire, state: SimulatorState) -> None:
    client, sent = wire
    session = await client.start_session(remote_id="x:1", name=None)
    task = await client.send_message(session, "hi", context={"source": "test"})
    result = await client.poll_task(session, task)
    assert result.status is TaskStatus.COMPLETE
    assert result.message is not None and result.message.content == "Echo #1: hi"
    assert result.message.role is MessageRole.ASSISTANT and result.message.created_at
    for request in sent:
        if request.url.path.startswith(f"/api/chat/{session.session_id}/"):
            assert request.headers["x-session-token"] == session.session_token
            assert "authorization" not in request.headers
            assert "x-embed-key" not in request.headers
    assert state.sessions[session.session_id].state["remote_context"] == {"source": "test"}


async def test_empty_participant_name_is_omitted_not_sent_blank(wire) -> None:
    client, sent = wire
    await client.start_session(remote_id="x:1", name="")
    start = next(r for r in sent if r.url.path == "/api/chat/start/")
    assert b"participant_name" not in start.content


async def test_token_is_fetched_once_and_shared_through_redis(wire, state: SimulatorState) -> None:
    client, _ = wire
    await client.start_session(remote_id="x:1", name=None)
    await client.start_session(remote_id="x:2", name=None)
    twin = OCSClient(name="demo", bot=client.bot, http=client._http, redis=client._redis, keys=Keys())
    await twin.start_session(remote_id="x:3", name=None)
    assert state.token_requests == 1


async def test_token_is_refreshed_once_on_401(wire, state: SimulatorState) -> None:
    client, _ = wire
    await client.start_session(remote_id="x:1", name=None)
    state.tokens.clear()  # revoked on the server: our cached token is now refused
    await client.start_session(remote_id="x:2", name=None)
    assert state.token_requests == 2


async def test_chatbot_not_allowlisted_raises_auth_failed_after_one_refresh(state: SimulatorState, wire) -> None:
    client, _ = wire
    state.oauth_apps["demo-client"].allowed_chatbots.clear()
    with pytest.raises(OCSAuthFailed) as caught:
        await client.start_session(remote_id="x:1", name=None)
    assert caught.value.body["code"] == "chat_access_denied"
    assert state.token_requests == 2


async def test_wrong_client_secret_is_rejected(wire) -> None:
    client, _ = wire
    bad = OCSClient(
        name="other",
        bot=BotConfig(base_url=BASE, chatbot_id=DEMO_CHATBOT_ID, client_id="demo-client", client_secret=Secret("wrong")),
        http=client._http, redis=client._redis, keys=Keys(),
    )
    with pytest.raises(OCSRejected) as caught:
        await bad.start_session(remote_id="x:1", name=None)
    assert caught.value.status == 401


async def test_keyless_mode_sends_no_credentials(state: SimulatorState, wire) -> None:
    client, sent = wire
    state.add_chatbot(SimChatbot(id="11111111-2222-4333-8444-555555555555", keyless_allowed=True))
    keyless = OCSClient(
        name="k", bot=BotConfig(base_url=BASE, chatbot_id="11111111-2222-4333-8444-555555555555", auth="keyless"),
        http=client._http, redis=client._redis, keys=Keys(),
    )
    await keyless.start_session(remote_id="x:1", name=None)
    start = [r for r in sent if r.url.path == "/api/chat/start/"][-1]
    assert "authorization" not in start.headers and "x-embed-key" not in start.headers


async def test_embed_key_mode_sends_key_and_its_origin_only_at_start(state: SimulatorState, wire) -> None:
    client, sent = wire
    state.add_chatbot(SimChatbot(id="22222222-2222-4333-8444-555555555555", embed_key="ek_1", allowed_domains=["shop.example"]))
    embed = OCSClient(
        name="e",
        bot=BotConfig(
            base_url=BASE, chatbot_id="22222222-2222-4333-8444-555555555555", auth="embed_key",
            embed_key=Secret("ek_1"), embed_origin="https://shop.example",
        ),
        http=client._http, redis=client._redis, keys=Keys(),
    )
    session = await embed.start_session(remote_id="x:1", name=None)
    await embed.send_message(session, "hi")
    start, message = [r for r in sent if r.url.path.startswith("/api/chat/")][-2:]
    assert start.headers["x-embed-key"] == "ek_1" and start.headers["origin"] == "https://shop.example"
    assert "x-embed-key" not in message.headers and "origin" not in message.headers


@pytest.mark.parametrize(
    ("status", "error"),
    [(503, OCSUnavailable), (500, OCSUnavailable), (429, OCSRateLimited), (400, OCSRejected), (404, OCSRejected)],
)
async def test_status_codes_map_to_typed_errors(wire, state: SimulatorState, status: int, error: type) -> None:
    client, _ = wire
    session = await client.start_session(remote_id="x:1", name=None)
    state.fail_next("message", status, count=1, **({"retry_after": 7} if status == 429 else {}))
    with pytest.raises(error) as caught:
        await client.send_message(session, "hi")
    if status == 429:
        assert caught.value.retry_after_s == 7


async def test_expired_session_raises_session_expired(wire, state: SimulatorState) -> None:
    client, _ = wire
    session = await client.start_session(remote_id="x:1", name=None)
    state.expire_session(session.session_id)
    with pytest.raises(SessionExpired) as caught:
        await client.send_message(session, "hi")
    assert caught.value.code == "session_expired"


async def test_unreachable_ocs_is_unavailable(redis_url: str) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    async with httpx.AsyncClient() as http:
        client = OCSClient(
            name="down", bot=BotConfig(base_url="http://127.0.0.1:9", chatbot_id=DEMO_CHATBOT_ID, auth="keyless"),
            http=http, redis=redis, keys=Keys(),
        )
        with pytest.raises(OCSUnavailable):
            await client.start_session(remote_id="x:1", name=None)
    await redis.aclose()


async def test_session_poll_pages_forward_with_the_exclusive_cursor(wire, state: SimulatorState) -> None:
    client, _ = wire
    session = await client.start_session(remote_id="x:1", name=None)
    for n in range(3):
        state.push_bot_message(session.session_id, f"note {n}")
    first = await client.session_messages(session, since=None, limit=2)
    assert [m.content for m in first.messages] == ["note 0", "note 1"] and first.has_more
    second = await client.session_messages(session, since=first.messages[-1].created_at, limit=2)
    assert [m.content for m in second.messages] == ["note 2"] and not second.has_more
    assert second.session_status is SessionStatus.ACTIVE


async def test_upload_then_message_with_attachment_ids(wire, state: SimulatorState) -> None:
    client, _ = wire
    session = await client.start_session(remote_id="x:1", name=None)
    ids = await client.upload(session, [("photo.png", b"\x89PNG\r\n\x1a\n" + b"0" * 32, "image/png")])
    await client.send_message(session, "[photo]", attachment_ids=ids)
    assert [f.name for f in state.uploaded_files(session.session_id)] == ["photo.png"]


async def test_end_session_needs_the_bearer_and_marks_pending_review(wire, state: SimulatorState) -> None:
    client, _ = wire
    session = await client.start_session(remote_id="x:1", name=None)
    assert await client.end_session(session.session_id) is True
    assert state.sessions[session.session_id].status == "pending-review"


def test_limit_scopes_keep_the_names_the_logs_show() -> None:
    assert [scope.value for scope in LimitScope] == ["session", "starts", "service", "budget"]
    assert f"demo:{LimitScope.STARTS}" == "demo:starts"  # workers/turns.py's pause key and log line


async def test_a_throttled_start_blocks_new_sessions_on_that_channel_but_not_open_sessions(
    state: SimulatorState, redis_url: str
) -> None:
    # OCS throttles start/ per channel (docs/OCS.md §3.1): a 429 there says nothing about the
    # sessions already open, whose turns must go on.
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_simulator_app(state)))
    redis = aioredis.Redis.from_url(redis_url)
    bot = BotConfig(base_url=BASE, chatbot_id=DEMO_CHATBOT_ID, client_id="demo-client", client_secret=Secret("demo-secret"))
    keys = Keys("start429")
    budget = RequestBudget(redis, keys, lambda _: bot.budget)
    client = OCSClient(name="demo", bot=bot, http=http, redis=redis, keys=keys, budget=budget)
    try:
        open_session = await client.start_session(remote_id="x:1", name=None, channel="support")
        state.fail_next("start", 429, retry_after=40)
        with pytest.raises(OCSRateLimited) as throttled:
            await client.start_session(remote_id="x:2", name=None, channel="support")
        assert throttled.value.scope is LimitScope.STARTS
        with pytest.raises(OCSRateLimited) as held:  # refused by our budget, OCS not asked
            await client.start_session(remote_id="x:3", name=None, channel="support")
        assert held.value.scope is LimitScope.BUDGET and held.value.retry_after_s > 30
        await client.send_message(open_session, "still answered")  # the open session goes on
        await client.start_session(remote_id="x:4", name=None, channel="other")  # another channel starts
    finally:
        await http.aclose()
        await redis.aclose()


async def test_a_message_or_upload_to_a_finished_session_raises_session_ended(wire, state: SimulatorState) -> None:
    # OCS answers 400 "Session has ended" once its review form completed the session (docs/OCS.md §6.1): a
    # "session gone" OCS did not accept the message in, not a rejection of the message.
    client, _ = wire
    session = await client.start_session(remote_id="x:1", name=None)
    state.complete_session(session.session_id)
    with pytest.raises(SessionEnded) as caught:
        await client.send_message(session, "hi")
    assert isinstance(caught.value, SessionExpired) and caught.value.code == "session_ended"
    with pytest.raises(SessionEnded):
        await client.upload(session, [("a.txt", b"abc", "text/plain")])
    assert state.user_messages(session.session_id) == []
    page = await client.session_messages(session, since=None)
    assert page.session_status is SessionStatus.ENDED


async def test_other_400s_of_a_message_stay_rejections(wire, state: SimulatorState) -> None:
    client, _ = wire
    session = await client.start_session(remote_id="x:1", name=None)
    with pytest.raises(OCSRejected) as caught:
        await client.send_message(session, "hi", attachment_ids=[12345])
    assert caught.value.body == {"error": "One or more file IDs are invalid"}


async def test_a_labelled_start_carries_its_label_in_the_remote_id_and_is_found_by_it(wire, state: SimulatorState) -> None:
    client, _ = wire
    began = time.time()
    other = await client.start_session(remote_id="webhook:c1", name=None, label="aaaa")
    mine = await client.start_session(remote_id="webhook:c1", name=None, label="bbbb")
    assert state.sessions[mine.session_id].remote_id == "webhook:c1#bbbb"
    found = await client.find_labelled_session("webhook:c1", "bbbb", created_after=began)
    assert found is not None and found.session_id == mine.session_id and found.status == "active"
    assert (await client.find_labelled_session("webhook:c1", "cccc", created_after=began)) is None
    assert other.session_id != mine.session_id
    assert await client.tag_session(mine.session_id, ["gateway-orphan"]) is True
    assert state.sessions[mine.session_id].tags == ["gateway-orphan"]


async def test_the_look_up_pages_back_only_to_a_little_before_the_label_was_written(wire, state: SimulatorState) -> None:
    client, sent = wire
    label_written = time.time() + 3600  # every session in the list is older than that, by far
    for n in range(_LOOKUP_PAGE + 5):
        state.create_session(state.chatbots[DEMO_CHATBOT_ID], f"webhook:c{n}", None, "embedded_widget")
    assert await client.find_labelled_session("webhook:c1", "zzzz", created_after=label_written) is None
    assert len([r for r in sent if r.url.path == "/api/sessions/"]) == 1  # one page, not all
    found = await client.find_labelled_session("webhook:c0", "", created_after=0.0)  # on the second page
    assert found is not None and found.remote_id == "webhook:c0"


def test_a_long_remote_id_gives_way_to_the_label() -> None:
    labelled = labelled_remote_id("slack:" + "T" * 300, "k3f9")
    assert len(labelled) == 255 and labelled.endswith("#k3f9")
    assert labelled_remote_id("telegram:42", "") == "telegram:42"


async def test_a_start_whose_answer_was_lost_is_ambiguous_and_one_never_seen_creates_nothing(
    sim: SimServer, redis_url: str
) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    bot = BotConfig(base_url=sim.url, chatbot_id=DEMO_CHATBOT_ID, client_id="demo-client", client_secret=Secret("demo-secret"))
    async with httpx.AsyncClient() as http:
        client = OCSClient(name="demo", bot=bot, http=http, redis=redis, keys=Keys())
        sim.state.drop_after_accept("start")
        with pytest.raises(OCSAmbiguous):
            await client.start_session(remote_id="x:1", name=None, label="lost")
        assert [s.remote_id for s in sim.state.list_sessions()] == ["x:1#lost"]
        sim.state.drop_before_accept("start")
        with pytest.raises(OCSAmbiguous):
            await client.start_session(remote_id="x:2", name=None, label="never")
        assert len(sim.state.list_sessions()) == 1
    await redis.aclose()
