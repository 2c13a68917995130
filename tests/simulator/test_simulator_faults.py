"""The simulator's fault and measurement knobs (issue 7 item 6, issue 8 item 3).

Network faults (round trip, cut connections) are proven over real TCP: the ``sim`` fixture
serves the simulator under uvicorn on loopback. Time-window behaviour uses a manual clock
through ``ASGITransport`` so nothing depends on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from gateway.ocs.simulator import (
    DEMO_CHATBOT_ID,
    ROUTE_NAMES,
    LatencyModel,
    SimulatedConnectionDrop,
    SimulatorKnobs,
    SimulatorState,
    create_simulator_app,
)
from tests.conftest import SimServer

BASE = "http://ocs.test"
NOT_PROVIDED = {"detail": "Authentication credentials were not provided."}
CUT = (httpx.RemoteProtocolError, httpx.ReadError)  # how a dropped connection reaches httpx


class ManualClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 8, 21, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest_asyncio.fixture
async def http(sim: SimServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=10) as client:
        yield client


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def state(clock: ManualClock) -> SimulatorState:
    sim = SimulatorState.demo(BASE, SimulatorKnobs(reply_latency_s=2.0))
    sim.clock = clock
    return sim


@pytest_asyncio.fixture
async def asgi(state: SimulatorState) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_simulator_app(state))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


async def token(client: httpx.AsyncClient) -> str:
    response = await client.post("/o/token/", data={
        "grant_type": "client_credentials", "client_id": "demo-client", "client_secret": "demo-secret",
        "scope": "chat:start sessions:write files:read"})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def start(client: httpx.AsyncClient, bearer: str) -> dict[str, Any]:
    response = await client.post("/api/chat/start/", json={"chatbot_id": DEMO_CHATBOT_ID},
                                 headers={"Authorization": f"Bearer {bearer}"})
    assert response.status_code == 201, response.text
    return dict(response.json())


def auth(session: dict[str, Any]) -> dict[str, str]:
    return {"X-Session-Token": session["session_token"]}


async def post_message(client: httpx.AsyncClient, session: dict[str, Any], text: str) -> httpx.Response:
    return await client.post(f"/api/chat/{session['session_id']}/message/", json={"message": text},
                             headers=auth(session))


async def session_poll(client: httpx.AsyncClient, session: dict[str, Any]) -> httpx.Response:
    return await client.get(f"/api/chat/{session['session_id']}/poll/", headers=auth(session))


async def wait_for_history(client: httpx.AsyncClient, session: dict[str, Any],
                           count: int) -> list[dict[str, Any]]:
    """Session-poll until ``count`` messages are in history (bounded, positive signal)."""
    messages: list[dict[str, Any]] = []
    for _ in range(200):
        response = await session_poll(client, session)
        assert response.status_code == 200, response.text
        messages = response.json()["messages"]
        if len(messages) >= count:
            return messages
        await asyncio.sleep(0.02)
    raise AssertionError(f"history stayed at {messages}")


# ------------------------------------------------------------------ round trip
async def test_round_trip_delay_holds_every_response_at_least_that_long(
        sim: SimServer, http: httpx.AsyncClient) -> None:
    sim.state.knobs.rtt_s = 0.3
    began = time.monotonic()
    response = await http.post("/o/token/", data={"grant_type": "client_credentials"})
    assert time.monotonic() - began >= 0.3
    assert response.status_code == 401  # the delay wraps whatever OCS answers


async def test_round_trip_delay_does_not_serialise_concurrent_requests(
        sim: SimServer, http: httpx.AsyncClient) -> None:
    session = await start(http, await token(http))
    sim.state.knobs.rtt_s = 1.0
    seen_by_server: list[int] = []

    async def poll() -> None:
        response = await session_poll(http, session)
        assert response.status_code == 200
        seen_by_server.append(sim.state.request_counts()["session_poll"])

    await asyncio.gather(*(poll() for _ in range(5)))
    # Every request had reached OCS before the first answer came back: the waits overlap.
    assert seen_by_server == [5] * 5


# ------------------------------------------------------------- latency models
def test_lognormal_latency_is_repeatable_for_a_seed_and_has_the_requested_median() -> None:
    model = LatencyModel.lognormal(median_s=3.0, p95_s=12.0)
    knobs = SimulatorKnobs(reply_latency=model, latency_seed=42)
    first, second = SimulatorState(knobs=knobs), SimulatorState(knobs=SimulatorKnobs(**vars(knobs)))
    draws = [first.sample_reply_latency() for _ in range(4000)]
    assert draws == [second.sample_reply_latency() for _ in range(4000)]
    assert statistics.median(draws) == pytest.approx(3.0, rel=0.08)
    below_p95 = sum(d <= 12.0 for d in draws) / len(draws)
    assert 0.93 <= below_p95 <= 0.97
    other_seed = SimulatorState(knobs=SimulatorKnobs(reply_latency=model, latency_seed=7))
    assert [other_seed.sample_reply_latency() for _ in range(5)] != draws[:5]


def draws(model: LatencyModel, seed: int, count: int) -> list[float]:
    rng = random.Random(seed)
    return [model.sample(rng) for _ in range(count)]


def test_changing_the_latency_seed_at_runtime_restarts_the_draws() -> None:
    model = LatencyModel.lognormal(1.0, 4.0)
    state = SimulatorState(knobs=SimulatorKnobs(reply_latency=model, latency_seed=1))
    assert [state.sample_reply_latency() for _ in range(3)] == draws(model, 1, 3)
    state.knobs.latency_seed = 9
    assert [state.sample_reply_latency() for _ in range(3)] == draws(model, 9, 3)
    state.knobs.latency_seed = 1
    assert [state.sample_reply_latency() for _ in range(3)] == draws(model, 1, 3)


def test_lognormal_model_refuses_a_p95_below_the_median() -> None:
    with pytest.raises(ValueError):
        LatencyModel.lognormal(median_s=3.0, p95_s=1.0)


async def test_tasks_finish_after_the_sampled_latency_and_report_when(
        asgi: httpx.AsyncClient, state: SimulatorState, clock: ManualClock) -> None:
    state.knobs.reply_latency = LatencyModel.lognormal(median_s=3.0, p95_s=12.0)
    state.knobs.latency_seed = 5
    expected = draws(LatencyModel.lognormal(3.0, 12.0), 5, 3)
    session = await start(asgi, await token(asgi))
    accepted = clock.now.timestamp()
    task_ids = []
    for text in ("a", "b", "c"):
        response = await post_message(asgi, session, text)
        task_ids.append(response.json()["task_id"])
    assert [state.task_completed_at(t) for t in task_ids] == [None, None, None]
    clock.advance(max(expected) + 1)
    completed = [state.task_completed_at(t) for t in task_ids]
    assert completed == [pytest.approx(accepted + e, abs=1e-6) for e in expected]


async def test_fixed_latency_model_replaces_reply_latency_s(
        asgi: httpx.AsyncClient, state: SimulatorState, clock: ManualClock) -> None:
    state.knobs.reply_latency = LatencyModel.fixed(0.5)
    session = await start(asgi, await token(asgi))
    task_id = (await post_message(asgi, session, "hi")).json()["task_id"]
    clock.advance(0.5)
    poll = await asgi.get(f"/api/chat/{session['session_id']}/{task_id}/poll/", headers=auth(session))
    assert poll.json()["status"] == "complete"  # reply_latency_s (2 s) no longer applies
    assert state.task_completed_at(task_id) == pytest.approx(clock.now.timestamp())


# ---------------------------------------------------------- drop after accept
async def test_dropped_message_is_a_transport_error_yet_is_answered_in_history(
        sim: SimServer, http: httpx.AsyncClient) -> None:
    session = await start(http, await token(http))
    sim.state.drop_after_accept("message")
    with pytest.raises(CUT):
        await post_message(http, session, "hello")
    assert sim.state.user_messages(session["session_id"]) == ["hello"]
    history = await wait_for_history(http, session, 2)
    assert [(m["role"], m["content"]) for m in history] == [("user", "hello"), ("assistant", "Echo #1: hello")]
    retry = await post_message(http, session, "again")  # one drop was asked for, one happened
    assert retry.status_code == 202


async def test_dropped_start_still_creates_the_session(sim: SimServer, http: httpx.AsyncClient) -> None:
    bearer = await token(http)
    sim.state.drop_after_accept("start")
    with pytest.raises(CUT):
        await http.post("/api/chat/start/", json={"chatbot_id": DEMO_CHATBOT_ID},
                        headers={"Authorization": f"Bearer {bearer}"})
    assert len(sim.state.list_sessions()) == 1


async def test_dropped_upload_still_stores_the_file(sim: SimServer, http: httpx.AsyncClient) -> None:
    session = await start(http, await token(http))
    sim.state.drop_after_accept("upload")
    with pytest.raises(CUT):
        await http.post(f"/api/chat/{session['session_id']}/upload/", headers=auth(session),
                        files=[("files", ("a.txt", b"abc", "text/plain"))])
    assert [f.data for f in sim.state.uploaded_files(session["session_id"])] == [b"abc"]


async def test_a_refused_call_does_not_use_up_the_drop(sim: SimServer, http: httpx.AsyncClient) -> None:
    session = await start(http, await token(http))
    sim.state.drop_after_accept("message")
    blank = await post_message(http, session, "   ")
    assert blank.status_code == 400  # not accepted, so answered normally
    with pytest.raises(CUT):
        await post_message(http, session, "real")
    assert sim.state.user_messages(session["session_id"]) == ["real"]


async def test_drop_without_a_reachable_connection_raises_to_an_asgi_caller(
        asgi: httpx.AsyncClient, state: SimulatorState) -> None:
    session = await start(asgi, await token(asgi))
    state.drop_after_accept("message")
    with pytest.raises(SimulatedConnectionDrop):
        await post_message(asgi, session, "hello")
    assert state.user_messages(session["session_id"]) == ["hello"]


def test_drop_for_an_unknown_route_is_refused(state: SimulatorState) -> None:
    with pytest.raises(ValueError):
        state.drop_after_accept("mesage")
    with pytest.raises(ValueError):
        state.drop_before_accept("mesage")


# --------------------------------------------------------- drop before accept
async def test_a_message_dropped_before_ocs_saw_it_is_a_transport_error_and_never_arrives(
        sim: SimServer, http: httpx.AsyncClient) -> None:
    session = await start(http, await token(http))
    sim.state.drop_before_accept("message")
    with pytest.raises(CUT):
        await post_message(http, session, "lost on the way")
    assert sim.state.user_messages(session["session_id"]) == []
    assert sim.state.request_counts()["message"] == 1  # what the client sent
    assert (await post_message(http, session, "again")).status_code == 202  # one drop, used up
    assert sim.state.user_messages(session["session_id"]) == ["again"]


async def test_a_start_dropped_before_ocs_saw_it_creates_no_session(sim: SimServer, http: httpx.AsyncClient) -> None:
    bearer = await token(http)
    sim.state.drop_before_accept("start")
    with pytest.raises(CUT):
        await http.post("/api/chat/start/", json={"chatbot_id": DEMO_CHATBOT_ID},
                        headers={"Authorization": f"Bearer {bearer}"})
    assert sim.state.list_sessions() == []


# ------------------------------------------------------------------ WAF docs/OCS.md §3.2
async def test_waf_blocks_past_the_limit_with_an_html_403_across_routes(
        sim: SimServer, http: httpx.AsyncClient) -> None:
    bearer = await token(http)
    sim.state.knobs.waf_limit = 3
    session = await start(http, bearer)  # 1
    assert (await session_poll(http, session)).status_code == 200  # 2
    assert (await post_message(http, session, "hi")).status_code == 202  # 3
    blocked = await http.post("/o/token/", data={"grant_type": "client_credentials"})  # 4: any route
    assert blocked.status_code == 403
    assert blocked.headers["content-type"].startswith("text/html")
    assert "403 Forbidden" in blocked.text
    again = await session_poll(http, session)
    assert again.status_code == 403 and again.headers["content-type"].startswith("text/html")
    assert sim.state.waf_blocked() == 2
    assert sim.state.user_messages(session["session_id"]) == ["hi"]  # blocked calls never reach OCS


async def test_waf_window_slides_and_blocked_requests_count(
        asgi: httpx.AsyncClient, state: SimulatorState, clock: ManualClock) -> None:
    state.knobs.waf_limit, state.knobs.waf_window_s = 2, 300
    for _ in range(2):
        assert (await asgi.post("/o/token/", data={})).status_code == 400
    clock.advance(200)
    assert (await asgi.post("/o/token/", data={})).status_code == 403  # 3 in the last 300 s
    clock.advance(101)  # the first two left the window; the blocked one is still in it
    assert (await asgi.post("/o/token/", data={})).status_code == 400
    assert (await asgi.post("/o/token/", data={})).status_code == 403
    state.knobs.waf_limit = None
    assert (await asgi.post("/o/token/", data={})).status_code == 400


# --------------------------------------------------------------- OCS restarted
async def test_forgotten_session_answers_403_not_provided_and_a_fresh_start_works(
        sim: SimServer, http: httpx.AsyncClient) -> None:
    bearer = await token(http)
    session = await start(http, bearer)
    task_id = (await post_message(http, session, "hello")).json()["task_id"]
    await wait_for_history(http, session, 2)
    sim.state.forget_sessions()
    message = await post_message(http, session, "still there?")
    assert message.status_code == 403 and message.json() == NOT_PROVIDED
    task_poll = await http.get(f"/api/chat/{session['session_id']}/{task_id}/poll/", headers=auth(session))
    assert task_poll.status_code == 403 and task_poll.json() == NOT_PROVIDED
    assert sim.state.list_sessions() == [] and sim.state.uploaded_files() == []
    fresh = await start(http, bearer)  # chatbot, app and token survived the restart
    assert (await post_message(http, fresh, "hello")).status_code == 202
    history = await wait_for_history(http, fresh, 2)
    assert history[-1]["content"] == "Echo #1: hello"
    assert sim.state.token_requests == 1
    assert sim.state.task_completed_at(task_id) is not None  # measurements outlive the restart


# ------------------------------------------------------------------- counters
async def test_request_counts_count_every_route_by_name(sim: SimServer, http: httpx.AsyncClient) -> None:
    sim.state.knobs.reply_attachments = True
    bearer = await token(http)
    session = await start(http, bearer)
    upload = await http.post(f"/api/chat/{session['session_id']}/upload/", headers=auth(session),
                             files=[("files", ("a.txt", b"abc", "text/plain"))])
    assert upload.status_code == 201
    task_id = (await post_message(http, session, "hi")).json()["task_id"]
    reply: dict[str, Any] = {}
    task_polls = 0
    while reply.get("status") != "complete":
        task_polls += 1
        reply = (await http.get(f"/api/chat/{session['session_id']}/{task_id}/poll/",
                                headers=auth(session))).json()
        assert task_polls < 200
    content_url = reply["message"]["attachments"][0]["content_url"]
    assert (await http.get(content_url, headers={"Authorization": f"Bearer {bearer}"})).status_code == 200
    await session_poll(http, session)
    ended = await http.post(f"/api/sessions/{session['session_id']}/end_experiment_session/",
                            headers={"Authorization": f"Bearer {bearer}"})
    assert ended.status_code == 200
    assert sim.state.request_counts() == {
        "end": 1, "files": 1, "message": 1, "session_get": 0, "session_list": 0, "session_poll": 1, "start": 1,
        "tags": 0, "task_poll": task_polls, "token": 1, "upload": 1}
    assert set(sim.state.request_counts()) == set(ROUTE_NAMES)


async def test_task_completed_at_is_wall_clock_time_the_reply_became_pollable(
        sim: SimServer, http: httpx.AsyncClient) -> None:
    sim.state.knobs.reply_latency_s = 0.2
    session = await start(http, await token(http))
    before = time.time()
    task_id = (await post_message(http, session, "hi")).json()["task_id"]
    assert sim.state.task_completed_at(task_id) is None
    await wait_for_history(http, session, 2)
    completed = sim.state.task_completed_at(task_id)
    assert completed is not None and before + 0.2 <= completed <= time.time()


# ---------------------------------------------------------------- rate limits docs/OCS.md §3.1
async def test_per_session_rate_limit_enforcement_switches_at_runtime(
        asgi: httpx.AsyncClient, state: SimulatorState) -> None:
    session = await start(asgi, await token(asgi))
    state.knobs.chat_rate_limit = 1
    assert (await session_poll(asgi, session)).status_code == 200
    over = await session_poll(asgi, session)
    assert over.status_code == 200 and over.headers["X-RateLimit-Remaining"] == "0"  # docs/OCS.md §3.1 off by default
    state.knobs.enforce_rate_limit = True
    refused = await session_poll(asgi, session)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == str(refused.json()["available_in"])
    state.knobs.enforce_rate_limit = False
    assert (await session_poll(asgi, session)).status_code == 200


# ------------------------------------------- /_simulator/ control (another process)
async def test_control_routes_set_knobs_and_read_counters_over_http(
        sim: SimServer, http: httpx.AsyncClient) -> None:
    changed = await http.post("/_simulator/knobs", json={
        "reply_latency": {"kind": "lognormal", "median_s": 0.05, "p95_s": 0.1}, "latency_seed": 3,
        "rtt_s": 0, "waf_limit": None})
    assert changed.status_code == 200
    assert changed.json()["reply_latency"] == {"kind": "lognormal", "median_s": 0.05, "p95_s": 0.1}
    assert sim.state.knobs.reply_latency == LatencyModel.lognormal(0.05, 0.1)
    session = await start(http, await token(http))
    task_id = (await post_message(http, session, "hi")).json()["task_id"]
    await wait_for_history(http, session, 2)
    stats = (await http.get("/_simulator/stats")).json()
    assert stats["request_counts"]["message"] == 1 and stats["request_counts"]["token"] == 1
    assert stats["waf_blocked"] == 0
    completed = (await http.get("/_simulator/tasks")).json()["completed_at"]
    assert completed == {task_id: sim.state.task_completed_at(task_id)}
    assert (await http.post("/_simulator/drop_after_accept", json={"route": "message"})).status_code == 200
    with pytest.raises(CUT):
        await post_message(http, session, "lost answer")
    assert (await http.post("/_simulator/drop_before_accept", json={"route": "message"})).status_code == 200
    with pytest.raises(CUT):
        await post_message(http, session, "never seen")
    assert "never seen" not in sim.state.user_messages(session["session_id"])
    assert (await http.post("/_simulator/complete_session", json={"session_id": session["session_id"]})).status_code == 200
    assert (await post_message(http, session, "x")).json() == {"error": "Session has ended"}
    assert (await http.post("/_simulator/complete_session", json={"session_id": "nope"})).status_code == 404
    assert (await http.post("/_simulator/forget_sessions")).status_code == 200
    assert (await post_message(http, session, "x")).json() == NOT_PROVIDED


async def test_control_knobs_refuse_unknown_names_and_wrong_types_and_change_nothing(
        sim: SimServer, http: httpx.AsyncClient) -> None:
    for body in ({"rtt": 1}, {"rtt_s": "fast"}, {"waf_limit": 1.5}, {"enforce_rate_limit": 1},
                 {"reply_latency": {"kind": "lognormal", "median_s": 3, "p95_s": 1}},
                 {"rtt_s": 0.5, "latency_seed": "x"}):
        response = await http.post("/_simulator/knobs", json=body)
        assert response.status_code == 400, body
    infinite = await http.post("/_simulator/knobs", content=b'{"rtt_s": 1e999}')  # json reads inf
    assert infinite.status_code == 400
    assert sim.state.knobs.rtt_s == 0.0
    assert (await http.post("/_simulator/drop_after_accept", json={"route": "nope"})).status_code == 400


async def test_control_routes_can_be_left_out(state: SimulatorState) -> None:
    app = create_simulator_app(state, control=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        assert (await client.get("/_simulator/stats")).status_code == 404


async def test_progress_lines_are_set_over_http_and_follow_one_another_while_a_task_runs(
        sim: SimServer, http: httpx.AsyncClient) -> None:
    changed = await http.post("/_simulator/knobs", json={
        "progress_lines": ["Reading", "Thinking"], "progress_every_s": 0.05, "reply_latency_s": 600})
    assert changed.status_code == 200, changed.text
    assert sim.state.knobs.progress_lines == ("Reading", "Thinking")
    refused = await http.post("/_simulator/knobs", json={"progress_lines": [1, 2]})
    assert refused.status_code == 400 and sim.state.knobs.progress_lines == ("Reading", "Thinking")
    session = await start(http, await token(http))
    task_id = (await post_message(http, session, "hi")).json()["task_id"]
    headers = {"X-Session-Token": session["session_token"]}
    seen: list[str] = []
    for _ in range(400):  # bounded: the lines change every 0.05 s; stop once both were seen
        body = (await http.get(f"/api/chat/{session['session_id']}/{task_id}/poll/", headers=headers)).json()
        assert body["status"] == "processing"
        line = body["message"]["content"]
        if not seen or seen[-1] != line:
            seen.append(line)
        if seen == ["Reading", "Thinking"]:
            break
        await asyncio.sleep(0.01)
    assert seen == ["Reading", "Thinking"]
