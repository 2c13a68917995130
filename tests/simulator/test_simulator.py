"""Behaviour tests for the OCS simulator; § = docs/OCS.md."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from gateway.ocs.simulator import (
    SimChatbot,
    SimOAuthApp,
    SimulatorKnobs,
    SimulatorState,
    create_simulator_app,
)

pytestmark = pytest.mark.asyncio

BOT_ID = "11111111-1111-4111-8111-111111111111"  # oauth, server-only, allowlisted
EMBED_BOT_ID = "22222222-2222-4222-8222-222222222222"  # embed_key mode, example.org
UNLISTED_BOT_ID = "33333333-3333-4333-8333-333333333333"  # oauth, not in the app's allowlist
BASE = "http://ocs.test"
ALL_SCOPES = "chat:start sessions:write sessions:read files:read"
DENIED = {"error": "Authentication required to chat with this chatbot", "code": "chat_access_denied"}


class ManualClock:
    """A clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 8, 21, 12, 0, 0, 500000, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def state(clock: ManualClock) -> SimulatorState:
    sim = SimulatorState(knobs=SimulatorKnobs(reply_latency_s=2.0), base_url=BASE, clock=clock)
    sim.add_chatbot(SimChatbot(id=BOT_ID, name="Clinic Helper", credential_mode="oauth"))
    sim.add_chatbot(SimChatbot(id=EMBED_BOT_ID, name="Widget bot", embed_key="ek-123",
                               allowed_domains=["example.org"]))
    sim.add_chatbot(SimChatbot(id=UNLISTED_BOT_ID, credential_mode="oauth"))
    sim.add_oauth_app(SimOAuthApp(client_id="gw", client_secret="s3cr3t", team="demo",
                                  allowed_chatbots=[BOT_ID, EMBED_BOT_ID]))
    sim.add_api_key("key-123", "demo")
    return sim


@pytest_asyncio.fixture
async def client(state: SimulatorState) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_simulator_app(state))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        yield http


async def get_token(client: httpx.AsyncClient, scope: str = ALL_SCOPES) -> str:
    response = await client.post("/o/token/", data={
        "grant_type": "client_credentials", "client_id": "gw", "client_secret": "s3cr3t", "scope": scope})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def start(client: httpx.AsyncClient, token: str | None = None, **body: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.post("/api/chat/start/", json={"chatbot_id": BOT_ID, **body}, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def auth(session: dict[str, Any]) -> dict[str, str]:
    return {"X-Session-Token": session["session_token"]}


async def send(client: httpx.AsyncClient, session: dict[str, Any], text: str, **extra: Any) -> str:
    response = await client.post(f"/api/chat/{session['session_id']}/message/",
                                 json={"message": text, **extra}, headers=auth(session))
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


async def poll_task(client: httpx.AsyncClient, session: dict[str, Any], task_id: str) -> httpx.Response:
    return await client.get(f"/api/chat/{session['session_id']}/{task_id}/poll/", headers=auth(session))


async def poll_session(client: httpx.AsyncClient, session: dict[str, Any], **params: Any) -> dict[str, Any]:
    response = await client.get(f"/api/chat/{session['session_id']}/poll/", params=params,
                                headers=auth(session))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def upload(client: httpx.AsyncClient, session: dict[str, Any],
                 files: list[tuple[str, bytes, str]]) -> httpx.Response:
    parts = [("files", (name, data, ctype)) for name, data, ctype in files]
    return await client.post(f"/api/chat/{session['session_id']}/upload/", files=parts,
                             headers=auth(session))


# ------------------------------------------------------------------ /o/token/ §2.3
async def test_token_client_credentials_returns_bearer_with_requested_scope(client: httpx.AsyncClient) -> None:
    response = await client.post("/o/token/", data={
        "grant_type": "client_credentials", "client_id": "gw", "client_secret": "s3cr3t",
        "scope": "chat:start files:read"})
    body = response.json()
    assert response.status_code == 200
    assert body["token_type"] == "Bearer" and body["expires_in"] == 36000
    assert body["scope"] == "chat:start files:read" and body["access_token"]


async def test_token_accepts_http_basic_client_authentication(client: httpx.AsyncClient) -> None:
    basic = base64.b64encode(b"gw:s3cr3t").decode()
    response = await client.post("/o/token/", data={"grant_type": "client_credentials", "scope": "chat:start"},
                                 headers={"Authorization": f"Basic {basic}"})
    assert response.status_code == 200 and response.json()["scope"] == "chat:start"


async def test_token_bad_secret_is_401_invalid_client(client: httpx.AsyncClient) -> None:
    response = await client.post("/o/token/", data={
        "grant_type": "client_credentials", "client_id": "gw", "client_secret": "nope", "scope": "chat:start"})
    assert response.status_code == 401 and response.json() == {"error": "invalid_client"}


async def test_token_requests_are_counted_and_lifetime_knob_applies(
        client: httpx.AsyncClient, state: SimulatorState) -> None:
    state.knobs.token_lifetime_s = 60
    await get_token(client)
    second = await client.post("/o/token/", data={
        "grant_type": "client_credentials", "client_id": "gw", "client_secret": "s3cr3t", "scope": "chat:start"})
    assert second.json()["expires_in"] == 60
    assert state.token_requests == 2


# ------------------------------------------------------------- chat/start/ §2.4, §4.1
async def test_start_oauth_returns_201_with_anon_participant_token_and_chatbot(client: httpx.AsyncClient) -> None:
    body = await start(client, await get_token(client), participant_remote_id="telegram:42",
                       participant_name="Ada")
    assert body["participant"]["identifier"].startswith("anon:")
    assert body["participant"]["remote_id"] == "telegram:42"
    assert body["session_token"].count(":") == 2  # payload:timestamp:signature
    assert body["chatbot"] == {"id": BOT_ID, "name": "Clinic Helper", "version_number": 1, "versions": [],
                               "url": f"{BASE}/api/experiments/{BOT_ID}/"}


async def test_start_every_call_creates_a_fresh_participant(client: httpx.AsyncClient) -> None:
    token = await get_token(client)
    first = await start(client, token, participant_remote_id="telegram:42")
    second = await start(client, token, participant_remote_id="telegram:42")
    assert first["participant"]["identifier"] != second["participant"]["identifier"]


async def test_start_is_also_served_under_the_v1_alias(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/chat/start/", json={"chatbot_id": BOT_ID},
                                 headers={"Authorization": f"Bearer {await get_token(client)}"})
    assert response.status_code == 201


async def test_start_without_trailing_slash_does_not_route(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat/start", json={"chatbot_id": BOT_ID})
    assert response.status_code == 404


async def test_start_non_json_body_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat/start/", data={"chatbot_id": BOT_ID})
    assert response.status_code == 415 and "Unsupported media type" in response.json()["detail"]


async def test_start_with_api_key_as_bearer_is_401_chat_access_denied(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat/start/", json={"chatbot_id": BOT_ID},
                                 headers={"Authorization": "Bearer key-123"})
    assert response.status_code == 401 and response.json() == DENIED
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'


async def test_start_token_without_chat_start_scope_is_denied(client: httpx.AsyncClient) -> None:
    token = await get_token(client, scope="sessions:write")
    response = await client.post("/api/chat/start/", json={"chatbot_id": BOT_ID},
                                 headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and response.json() == DENIED


async def test_start_with_expired_oauth_token_is_denied(client: httpx.AsyncClient, clock: ManualClock) -> None:
    token = await get_token(client)
    clock.advance(36001)
    response = await client.post("/api/chat/start/", json={"chatbot_id": BOT_ID},
                                 headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and response.json() == DENIED


async def test_start_with_origin_on_server_only_oauth_channel_is_denied(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat/start/", json={"chatbot_id": BOT_ID}, headers={
        "Authorization": f"Bearer {await get_token(client)}", "Origin": "https://example.org"})
    assert response.status_code == 401 and response.json() == DENIED


async def test_start_chatbot_not_in_app_allowlist_is_denied(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat/start/", json={"chatbot_id": UNLISTED_BOT_ID},
                                 headers={"Authorization": f"Bearer {await get_token(client)}"})
    assert response.status_code == 401 and response.json() == DENIED


async def test_start_oauth_on_embed_key_mode_channel_is_denied(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat/start/", json={"chatbot_id": EMBED_BOT_ID},
                                 headers={"Authorization": f"Bearer {await get_token(client)}"})
    assert response.status_code == 401 and response.json() == DENIED


async def test_start_unknown_chatbot_is_404_even_with_authorization(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat/start/", json={"chatbot_id": "44444444-4444-4444-8444-444444444444"},
                                 headers={"Authorization": "Bearer whatever"})
    assert response.status_code == 404
    assert response.json() == {"detail": "No Experiment matches the given query."}


async def test_start_non_uuid_chatbot_with_authorization_is_400_detail(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat/start/", json={"chatbot_id": "abc"},
                                 headers={"Authorization": "Bearer whatever"})
    assert response.status_code == 400 and response.json() == {"detail": "chatbot_id must be a valid UUID"}


async def test_start_wrong_embed_key_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat/start/", json={"chatbot_id": EMBED_BOT_ID},
                                 headers={"X-Embed-Key": "wrong", "Origin": "https://example.org"})
    assert response.status_code == 401 and response.json() == {"detail": "Invalid widget embed key"}


async def test_start_embed_key_from_unlisted_origin_is_403(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat/start/", json={"chatbot_id": EMBED_BOT_ID},
                                 headers={"X-Embed-Key": "ek-123", "Origin": "https://evil.test"})
    assert response.status_code == 403


async def test_start_embed_key_with_matching_origin_is_admitted_as_widget(
        client: httpx.AsyncClient, state: SimulatorState) -> None:
    response = await client.post("/api/chat/start/", json={"chatbot_id": EMBED_BOT_ID},
                                 headers={"X-Embed-Key": "ek-123", "Referer": "https://example.org/page"})
    assert response.status_code == 201
    assert state.sessions[response.json()["session_id"]].platform == "embedded_widget"


async def test_start_keyless_is_admitted_on_the_api_platform(client: httpx.AsyncClient,
                                                              state: SimulatorState) -> None:
    body = await start(client)
    assert state.sessions[body["session_id"]].platform == "api"


async def test_start_keyless_refused_when_chatbot_closes_keyless(client: httpx.AsyncClient,
                                                                 state: SimulatorState) -> None:
    state.chatbots[BOT_ID].keyless_allowed = False
    response = await client.post("/api/chat/start/", json={"chatbot_id": BOT_ID})
    assert response.status_code == 401 and response.json() == DENIED


async def test_start_empty_string_optional_field_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat/start/", json={"chatbot_id": BOT_ID, "participant_name": ""})
    assert response.status_code == 400
    assert response.json() == {"participant_name": ["This field may not be blank."]}


async def test_start_version_number_from_anonymous_is_403(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat/start/", json={"chatbot_id": BOT_ID, "version_number": 2},
                                 headers={"Authorization": f"Bearer {await get_token(client)}"})
    assert response.status_code == 403
    assert response.json() == {"error": "Version number requires authentication"}


async def test_start_disabled_channel_is_403_with_admin_message(client: httpx.AsyncClient,
                                                                state: SimulatorState) -> None:
    state.chatbots[BOT_ID].enabled = False
    response = await client.post("/api/chat/start/", json={"chatbot_id": BOT_ID},
                                 headers={"Authorization": f"Bearer {await get_token(client)}"})
    assert response.status_code == 403
    assert response.json() == {"error": "This chatbot is currently unavailable."}


async def test_missing_user_agent_is_blocked_like_the_waf(client: httpx.AsyncClient) -> None:
    client.headers.pop("User-Agent")
    response = await client.post("/api/chat/start/", json={"chatbot_id": BOT_ID})
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/html")


# ---------------------------------------------------- session-bound gate §2.5, §4.2
async def test_session_route_with_non_uuid_session_id_is_plain_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/chat/not-a-uuid/poll/", headers={"X-Session-Token": "x"})
    assert response.status_code == 404
    assert not response.headers["content-type"].startswith("application/json")


async def test_unknown_session_is_403_credentials_not_provided(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/chat/44444444-4444-4444-8444-444444444444/poll/",
                                headers={"X-Session-Token": "x"})
    assert response.status_code == 403
    assert response.json() == {"detail": "Authentication credentials were not provided."}


async def test_session_token_missing_is_403_required(client: httpx.AsyncClient) -> None:
    session = await start(client)
    response = await client.get(f"/api/chat/{session['session_id']}/poll/")
    assert response.status_code == 403
    assert response.json() == {"error": "Session token required", "code": "session_token_required"}


async def test_session_token_of_another_session_is_403_invalid(client: httpx.AsyncClient) -> None:
    first, second = await start(client), await start(client)
    response = await client.get(f"/api/chat/{first['session_id']}/poll/", headers=auth(second))
    assert response.status_code == 403
    assert response.json() == {"error": "Invalid session token", "code": "session_token_invalid"}


async def test_session_token_expires_on_absolute_age(client: httpx.AsyncClient, clock: ManualClock) -> None:
    session = await start(client)
    clock.advance(7 * 24 * 3600 + 1)
    response = await client.get(f"/api/chat/{session['session_id']}/poll/", headers=auth(session))
    assert response.status_code == 403
    assert response.json() == {"error": "Session has expired", "code": "session_expired"}


async def test_expire_session_helper_ages_the_session(client: httpx.AsyncClient,
                                                      state: SimulatorState) -> None:
    session = await start(client)
    state.expire_session(session["session_id"])
    response = await client.post(f"/api/chat/{session['session_id']}/message/", json={"message": "hi"},
                                 headers=auth(session))
    assert response.status_code == 403 and response.json()["code"] == "session_expired"


async def test_embed_key_on_session_route_without_origin_is_403(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat/start/", json={"chatbot_id": EMBED_BOT_ID},
                                 headers={"X-Embed-Key": "ek-123", "Origin": "https://example.org"})
    session = response.json()
    poll = await client.get(f"/api/chat/{session['session_id']}/poll/",
                            headers={**auth(session), "X-Embed-Key": "ek-123"})
    assert poll.status_code == 403
    assert poll.json() == {"detail": "You do not have permission to perform this action."}


# ---------------------------------------------------------------- message/ §4.2
async def test_message_missing_text_is_400_required(client: httpx.AsyncClient) -> None:
    session = await start(client)
    response = await client.post(f"/api/chat/{session['session_id']}/message/", json={"attachment_ids": []},
                                 headers=auth(session))
    assert response.status_code == 400 and response.json() == {"message": ["This field is required."]}


async def test_message_blank_text_is_400_blank(client: httpx.AsyncClient) -> None:
    session = await start(client)
    response = await client.post(f"/api/chat/{session['session_id']}/message/", json={"message": "   "},
                                 headers=auth(session))
    assert response.status_code == 400 and response.json() == {"message": ["This field may not be blank."]}


async def test_message_returns_202_processing_with_task_id(client: httpx.AsyncClient,
                                                           state: SimulatorState) -> None:
    session = await start(client)
    response = await client.post(f"/api/chat/{session['session_id']}/message/", json={"message": " hi "},
                                 headers=auth(session))
    assert response.status_code == 202 and response.json()["status"] == "processing"
    assert state.user_messages(session["session_id"]) == ["hi"]


async def test_user_message_reaches_history_only_when_worker_runs(client: httpx.AsyncClient,
                                                                  clock: ManualClock) -> None:
    session = await start(client)
    task_id = await send(client, session, "hello")
    assert (await poll_session(client, session))["messages"] == []
    clock.advance(1.0)  # the worker picked it up, the reply is not ready yet
    assert [m["role"] for m in (await poll_session(client, session))["messages"]] == ["user"]
    assert (await poll_task(client, session, task_id)).json() == {"status": "processing", "message": None}
    clock.advance(1.0)
    reply = (await poll_task(client, session, task_id)).json()
    assert reply["status"] == "complete" and reply["message"]["content"] == "Echo #1: hello"


async def test_replies_are_numbered_per_session(client: httpx.AsyncClient, clock: ManualClock) -> None:
    session = await start(client)
    await send(client, session, "one")
    clock.advance(3)
    task_id = await send(client, session, "two")
    clock.advance(3)
    assert (await poll_task(client, session, task_id)).json()["message"]["content"] == "Echo #2: two"


async def test_message_context_is_stored_as_remote_context(client: httpx.AsyncClient, state: SimulatorState,
                                                           clock: ManualClock) -> None:
    session = await start(client)
    await send(client, session, "hi", context={"source": "telegram"})
    clock.advance(3)
    state.history(session["session_id"])
    assert state.sessions[session["session_id"]].state["remote_context"] == {"source": "telegram"}


async def test_message_to_complete_session_is_400_session_ended(client: httpx.AsyncClient,
                                                                state: SimulatorState) -> None:
    session = await start(client)
    state.sessions[session["session_id"]].status = "complete"
    response = await client.post(f"/api/chat/{session['session_id']}/message/", json={"message": "hi"},
                                 headers=auth(session))
    assert response.status_code == 400 and response.json() == {"error": "Session has ended"}


async def test_a_session_finished_as_the_review_form_does_refuses_messages_and_uploads_and_polls_ended(
        client: httpx.AsyncClient, state: SimulatorState, clock: ManualClock) -> None:
    session = await start(client)
    task_id = await send(client, session, "before the end")
    state.complete_session(session["session_id"])
    refused = await client.post(f"/api/chat/{session['session_id']}/message/", json={"message": "hi"},
                                headers=auth(session))
    assert refused.status_code == 400 and refused.json() == {"error": "Session has ended"}
    files = await upload(client, session, [("note.txt", b"hello", "text/plain")])
    assert files.status_code == 400 and files.json() == {"error": "Session has ended"}
    clock.advance(3)
    polled = await poll_session(client, session)
    assert polled["session_status"] == "ended"
    # A task accepted before the end still runs (the worker does not look at the status).
    assert [m["content"] for m in polled["messages"]] == ["before the end", "Echo #1: before the end"]
    assert (await poll_task(client, session, task_id)).json()["status"] == "complete"
    assert state.user_messages(session["session_id"]) == ["before the end"]


async def test_a_completed_session_is_not_made_active_again_by_ending_it_through_the_api(
        client: httpx.AsyncClient, state: SimulatorState) -> None:
    session = await start(client)
    state.complete_session(session["session_id"])
    assert state.sessions[session["session_id"]].status == "complete"
    ended = await client.post(f"/api/sessions/{session['session_id']}/end_experiment_session/",
                              headers={"Authorization": f"Bearer {await get_token(client)}"})
    assert ended.status_code == 200
    # end_experiment_session moves any session to pending-review (docs/OCS.md §4.8), which polls "active":
    # only the review form's "complete" says ended.
    assert (await poll_session(client, session))["session_status"] == "active"


# ---------------------------------------------------------------- task poll §4.3
async def test_unknown_task_polls_processing_forever(client: httpx.AsyncClient, clock: ManualClock) -> None:
    session = await start(client)
    clock.advance(3600)
    response = await poll_task(client, session, "no-such-task")
    assert response.status_code == 200 and response.json() == {"status": "processing", "message": None}


async def test_task_of_another_session_is_404(client: httpx.AsyncClient) -> None:
    first, second = await start(client), await start(client)
    task_id = await send(client, first, "hi")
    response = await poll_task(client, second, task_id)
    assert response.status_code == 404 and response.json() == {"detail": "Not found."}


async def test_progress_text_is_shown_while_running(client: httpx.AsyncClient, state: SimulatorState) -> None:
    state.knobs.progress_text = "Thinking…"
    session = await start(client)
    body = (await poll_task(client, session, await send(client, session, "hi"))).json()
    assert body["status"] == "processing"
    assert body["message"]["role"] == "assistant" and body["message"]["content"] == "Thinking…"


async def test_forced_user_error_task_polls_400(client: httpx.AsyncClient, state: SimulatorState,
                                                clock: ManualClock) -> None:
    state.fail_next_tasks("user_error")
    session = await start(client)
    task_id = await send(client, session, "hi")
    clock.advance(3)
    response = await poll_task(client, session, task_id)
    assert response.status_code == 400
    assert response.json() == {"status": "error", "error": state.knobs.user_error_text}


async def test_forced_internal_error_task_polls_500_then_next_task_succeeds(
        client: httpx.AsyncClient, state: SimulatorState, clock: ManualClock) -> None:
    state.fail_next_tasks("internal_error", count=1)
    session = await start(client)
    failed = await send(client, session, "a")
    clock.advance(3)
    ok = await send(client, session, "b")
    clock.advance(3)
    assert (await poll_task(client, session, failed)).status_code == 500
    assert (await poll_task(client, session, ok)).json()["status"] == "complete"


async def test_task_error_rate_knob_fails_every_task_at_rate_one(client: httpx.AsyncClient,
                                                                 state: SimulatorState,
                                                                 clock: ManualClock) -> None:
    state.knobs.task_user_error_rate = 1.0
    session = await start(client)
    task_id = await send(client, session, "x")
    clock.advance(3)
    assert (await poll_task(client, session, task_id)).status_code == 400


async def test_completed_reply_equals_the_message_in_history(client: httpx.AsyncClient,
                                                             clock: ManualClock) -> None:
    session = await start(client)
    task_id = await send(client, session, "hi")
    clock.advance(3)
    reply = (await poll_task(client, session, task_id)).json()["message"]
    history = (await poll_session(client, session))["messages"]
    assert history[-1] == reply
    assert set(reply) == {"created_at", "role", "content", "metadata", "tags", "attachments"}
    assert reply["created_at"].endswith("Z")


# ------------------------------------------------------------- session poll §4.4
async def test_session_poll_since_is_exclusive_and_limit_sets_has_more(
        client: httpx.AsyncClient, state: SimulatorState) -> None:
    session = await start(client)
    for text in ("a", "b", "c"):
        state.push_bot_message(session["session_id"], text)
    page = await poll_session(client, session, limit=2)
    assert [m["content"] for m in page["messages"]] == ["a", "b"] and page["has_more"] is True
    rest = await poll_session(client, session, since=page["messages"][-1]["created_at"])
    assert [m["content"] for m in rest["messages"]] == ["c"] and rest["has_more"] is False


async def test_session_poll_accepts_plus_offset_since(client: httpx.AsyncClient, state: SimulatorState,
                                                      clock: ManualClock) -> None:
    session = await start(client)
    state.push_bot_message(session["session_id"], "old")
    cursor = clock.now.isoformat()  # "+00:00" form, URL-encoded by httpx
    clock.advance(1)
    state.push_bot_message(session["session_id"], "new")
    page = await poll_session(client, session, since=cursor)
    assert [m["content"] for m in page["messages"]] == ["new"]


async def test_session_poll_invalid_since_is_400(client: httpx.AsyncClient) -> None:
    session = await start(client)
    response = await client.get(f"/api/chat/{session['session_id']}/poll/", params={"since": "yesterday"},
                                headers=auth(session))
    assert response.status_code == 400
    assert response.json() == {"error": "Invalid 'since' parameter format. Use ISO format."}


async def test_timestamps_strictly_increase_under_a_frozen_clock(client: httpx.AsyncClient,
                                                                 state: SimulatorState) -> None:
    session = await start(client)
    for text in ("a", "b", "c"):
        state.push_bot_message(session["session_id"], text)
    stamps = [m["created_at"] for m in (await poll_session(client, session))["messages"]]
    assert stamps == sorted(set(stamps)) and len(stamps) == 3


async def test_session_status_is_ended_only_for_complete(client: httpx.AsyncClient,
                                                         state: SimulatorState) -> None:
    session = await start(client)
    state.sessions[session["session_id"]].status = "complete"
    assert (await poll_session(client, session))["session_status"] == "ended"


async def test_bot_pushed_message_is_visible_only_through_session_poll(client: httpx.AsyncClient,
                                                                       state: SimulatorState) -> None:
    session = await start(client)
    state.push_bot_message(session["session_id"], "Reminder: 10:30")
    message = (await poll_session(client, session))["messages"][0]
    assert message["role"] == "assistant" and message["content"] == "Reminder: 10:30"


# --------------------------------------------------- end_experiment_session §4.8
async def test_end_session_sets_pending_review_with_empty_200_and_chat_stays_active(
        client: httpx.AsyncClient, state: SimulatorState, clock: ManualClock) -> None:
    session = await start(client)
    token = await get_token(client)
    response = await client.post(f"/api/sessions/{session['session_id']}/end_experiment_session/",
                                 headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response.content == b""
    assert state.sessions[session["session_id"]].status == "pending-review"
    assert (await poll_session(client, session))["session_status"] == "active"
    await send(client, session, "still there?")
    clock.advance(3)
    state.history(session["session_id"])
    assert state.sessions[session["session_id"]].status == "active"


async def test_end_session_without_sessions_write_scope_is_403(client: httpx.AsyncClient) -> None:
    session = await start(client)
    token = await get_token(client, scope="chat:start")
    response = await client.post(f"/api/sessions/{session['session_id']}/end_experiment_session/",
                                 headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403


async def test_end_session_with_invalid_token_is_401_invalid_token(client: httpx.AsyncClient) -> None:
    session = await start(client)
    response = await client.post(f"/api/sessions/{session['session_id']}/end_experiment_session/",
                                 headers={"Authorization": "Bearer expired"})
    assert response.status_code == 401 and response.json() == {"detail": "Invalid token."}


async def test_end_unknown_session_is_404_with_literal_placeholder(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/sessions/44444444-4444-4444-8444-444444444444/end_experiment_session/",
                                 headers={"Authorization": f"Bearer {await get_token(client)}"})
    assert response.status_code == 404 and response.json() == {"error": "Session not found:{id}"}


async def test_get_session_reports_raw_status(client: httpx.AsyncClient) -> None:
    session = await start(client, participant_remote_id="slack:U1")
    response = await client.get(f"/api/sessions/{session['session_id']}/",
                                headers={"Authorization": f"Bearer {await get_token(client)}"})
    body = response.json()
    assert response.status_code == 200 and body["status"] == "active"
    assert body["participant"]["remote_id"] == "slack:U1" and body["id"] == session["session_id"]


async def test_session_list_is_newest_first_filtered_by_chatbot_and_paged_by_cursor(
        client: httpx.AsyncClient, state: SimulatorState, clock: ManualClock) -> None:
    bearer = {"Authorization": f"Bearer {await get_token(client)}"}
    ids = []
    for n in range(3):
        ids.append((await start(client, participant_remote_id=f"webhook:c{n}"))["session_id"])
        clock.advance(1)
    other = SimChatbot(id="55555555-5555-4555-8555-555555555555", credential_mode="oauth")
    state.add_chatbot(other)
    state.create_session(other, "elsewhere", None, "embedded_widget")
    first = await client.get("/api/sessions/", params={"experiment": BOT_ID, "page_size": 2}, headers=bearer)
    assert first.status_code == 200
    body = first.json()
    assert [s["id"] for s in body["results"]] == [ids[2], ids[1]] and body["count"] == 3
    assert body["results"][0]["participant"]["remote_id"] == "webhook:c2"
    assert body["results"][0]["created_at"].endswith("Z") and "messages" not in body["results"][0]
    second = (await client.get(body["next"], headers=bearer)).json()
    assert [s["id"] for s in second["results"]] == [ids[0]] and second["next"] is None and "count" not in second
    oldest = await client.get("/api/sessions/", params={"experiment": BOT_ID, "ordering": "created_at"}, headers=bearer)
    assert [s["id"] for s in oldest.json()["results"]] == ids


async def test_session_list_needs_sessions_read(client: httpx.AsyncClient) -> None:
    await start(client)
    token = await get_token(client, scope="chat:start")
    assert (await client.get("/api/sessions/", headers={"Authorization": f"Bearer {token}"})).status_code == 403
    assert (await client.get("/api/sessions/")).status_code == 401


async def test_tags_are_added_to_a_session_and_filter_the_session_list(client: httpx.AsyncClient) -> None:
    bearer = {"Authorization": f"Bearer {await get_token(client)}"}
    tagged, plain = await start(client), await start(client)
    response = await client.post(f"/api/sessions/{tagged['session_id']}/tags/", json={"tags": ["orphan", "x"]},
                                 headers=bearer)
    assert response.status_code == 200 and response.json() == {"tags": ["orphan", "x"]}
    again = await client.post(f"/api/sessions/{tagged['session_id']}/tags/", json={"tags": ["orphan"]}, headers=bearer)
    assert again.json() == {"tags": ["orphan", "x"]}
    listed = await client.get("/api/sessions/", params={"tags": "orphan"}, headers=bearer)
    assert [s["id"] for s in listed.json()["results"]] == [tagged["session_id"]]
    assert plain["session_id"] not in [s["id"] for s in listed.json()["results"]]
    for bad, error in (({}, "Missing 'tags' in request"), ({"tags": "x"}, "'tags' must be a list"),
                       ({"tags": [""]}, "'tags' must be a list of non-empty strings")):
        refused = await client.post(f"/api/sessions/{plain['session_id']}/tags/", json=bad, headers=bearer)
        assert refused.status_code == 400 and refused.json() == {"error": error}
    unknown = "44444444-4444-4444-8444-444444444444"
    missing = await client.post(f"/api/sessions/{unknown}/tags/", json={"tags": ["x"]}, headers=bearer)
    assert missing.status_code == 404 and missing.json() == {"error": f"Session not found: {unknown}"}


# ------------------------------------------------------------------ upload §4.5
async def test_upload_returns_201_and_keeps_bytes(client: httpx.AsyncClient, state: SimulatorState) -> None:
    session = await start(client)
    response = await upload(client, session, [("note.txt", b"hello", "text/plain")])
    assert response.status_code == 201
    (item,) = response.json()["files"]
    assert item["name"] == "note.txt" and item["size"] == 5 and isinstance(item["id"], int)
    assert state.uploaded_files(session["session_id"])[0].data == b"hello"


async def test_upload_with_one_bad_file_stores_nothing(client: httpx.AsyncClient, state: SimulatorState) -> None:
    session = await start(client)
    response = await upload(client, session, [("ok.pdf", b"%PDF-1.4", "application/pdf"),
                                              ("run.exe", b"MZ", "application/octet-stream")])
    assert response.status_code == 400 and response.json()["error"].startswith("File type '.exe'")
    assert state.uploaded_files() == []


async def test_upload_accepts_unknown_extension_with_text_content_type(client: httpx.AsyncClient) -> None:
    session = await start(client)
    response = await upload(client, session, [("notes.log", b"line", "text/plain")])
    assert response.status_code == 201


async def test_upload_refuses_svg_even_as_text(client: httpx.AsyncClient) -> None:
    session = await start(client)
    response = await upload(client, session, [("x.svg", b"<svg/>", "text/xml")])
    assert response.status_code == 400


async def test_upload_over_size_limit_is_400(client: httpx.AsyncClient, state: SimulatorState) -> None:
    state.knobs.max_upload_mb = 0.001
    session = await start(client)
    response = await upload(client, session, [("big.txt", b"x" * 2000, "text/plain")])
    assert response.status_code == 400 and response.json() == {
        "error": "File 'big.txt' exceeds maximum size of 0.001MB"}


async def test_upload_non_multipart_is_415(client: httpx.AsyncClient) -> None:
    session = await start(client)
    response = await client.post(f"/api/chat/{session['session_id']}/upload/", json={"files": []},
                                 headers=auth(session))
    assert response.status_code == 415


async def test_upload_without_files_is_400(client: httpx.AsyncClient) -> None:
    session = await start(client)
    response = await client.post(f"/api/chat/{session['session_id']}/upload/",
                                 files=[("other", ("a.txt", b"a", "text/plain"))], headers=auth(session))
    assert response.status_code == 400 and response.json() == {"error": "No files provided"}


async def test_attachments_are_listed_in_reply_and_user_message(client: httpx.AsyncClient,
                                                                clock: ManualClock) -> None:
    session = await start(client)
    files = (await upload(client, session, [("a.png", b"\x89PNG\r\n\x1a\nxx", "image/png")])).json()["files"]
    task_id = await send(client, session, "look", attachment_ids=[files[0]["id"]])
    clock.advance(3)
    reply = (await poll_task(client, session, task_id)).json()["message"]
    assert reply["content"] == "Echo #1: look\nAttachments: a.png"
    user = (await poll_session(client, session))["messages"][0]
    assert [a["name"] for a in user["attachments"]] == ["a.png"]
    assert files[0]["content_type"] == "image/png"


async def test_attachment_from_another_session_is_invalid(client: httpx.AsyncClient) -> None:
    first, second = await start(client), await start(client)
    file_id = (await upload(client, first, [("a.txt", b"a", "text/plain")])).json()["files"][0]["id"]
    response = await client.post(f"/api/chat/{second['session_id']}/message/",
                                 json={"message": "x", "attachment_ids": [file_id]}, headers=auth(second))
    assert response.status_code == 400 and response.json() == {"error": "One or more file IDs are invalid"}


async def test_duplicated_attachment_id_is_invalid(client: httpx.AsyncClient) -> None:
    session = await start(client)
    file_id = (await upload(client, session, [("a.txt", b"a", "text/plain")])).json()["files"][0]["id"]
    response = await client.post(f"/api/chat/{session['session_id']}/message/",
                                 json={"message": "x", "attachment_ids": [file_id, file_id]}, headers=auth(session))
    assert response.status_code == 400


# -------------------------------------------------------------- files §4.14
async def test_reply_attachment_downloads_with_files_read_but_not_session_token(
        client: httpx.AsyncClient, state: SimulatorState, clock: ManualClock) -> None:
    state.knobs.reply_attachments = True
    session = await start(client)
    task_id = await send(client, session, "file please")
    clock.advance(3)
    (attachment,) = (await poll_task(client, session, task_id)).json()["message"]["attachments"]
    assert attachment["content_url"].startswith(f"{BASE}/api/files/")
    path = attachment["content_url"].removeprefix(BASE)
    assert (await client.get(path, headers=auth(session))).status_code == 401
    download = await client.get(path, headers={"Authorization": f"Bearer {await get_token(client)}"})
    assert download.status_code == 200 and download.content == b"Echo #1: file please"
    assert "attachment" in download.headers["content-disposition"]


async def test_file_download_with_api_key_header(client: httpx.AsyncClient) -> None:
    session = await start(client)
    file_id = (await upload(client, session, [("a.txt", b"abc", "text/plain")])).json()["files"][0]["id"]
    response = await client.get(f"/api/files/{file_id}/content", headers={"X-api-key": "key-123"})
    assert response.status_code == 200 and response.content == b"abc"


# ------------------------------------------------------- rate limits §3.1 + faults
async def test_chat_responses_carry_rate_limit_headers(client: httpx.AsyncClient) -> None:
    session = await start(client)
    response = await client.get(f"/api/chat/{session['session_id']}/poll/", headers=auth(session))
    assert response.headers["X-RateLimit-Limit"] == "300"
    assert response.headers["X-RateLimit-Remaining"] == "299"
    assert int(response.headers["X-RateLimit-Reset"]) > 0


async def test_rate_limit_enforcement_returns_429_with_retry_after(client: httpx.AsyncClient,
                                                                   state: SimulatorState) -> None:
    state.knobs.enforce_rate_limit = True
    state.knobs.chat_rate_limit = 2
    session = await start(client)
    for _ in range(2):
        await poll_session(client, session)
    response = await client.get(f"/api/chat/{session['session_id']}/poll/", headers=auth(session))
    assert response.status_code == 429 and response.json()["detail"] == "Rate limit exceeded."
    assert response.headers["Retry-After"] == str(response.json()["available_in"])


async def test_fail_next_forces_outage_then_recovers(client: httpx.AsyncClient, state: SimulatorState) -> None:
    session = await start(client)
    state.fail_next("message", status=503, count=2)
    for _ in range(2):
        response = await client.post(f"/api/chat/{session['session_id']}/message/", json={"message": "x"},
                                     headers=auth(session))
        assert response.status_code == 503
    await send(client, session, "x")
    assert state.user_messages(session["session_id"]) == ["x"]
    assert state.request_count("message") == 3


async def test_fail_next_429_sets_retry_after(client: httpx.AsyncClient, state: SimulatorState) -> None:
    state.fail_next("token", status=429, retry_after=7)
    response = await client.post("/o/token/", data={"grant_type": "client_credentials"})
    assert response.status_code == 429 and response.headers["Retry-After"] == "7"


# ------------------------------------------------------ construction / deployment
async def test_mounted_under_prefix_routes_and_links_use_base_url(clock: ManualClock) -> None:
    sim = SimulatorState.demo(f"{BASE}/sim")
    sim.clock = clock
    sim.knobs.reply_attachments, sim.knobs.reply_latency_s = True, 0
    outer = Starlette(routes=[Mount("/sim", app=create_simulator_app(sim))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url=BASE) as http:
        token = (await http.post("/sim/o/token/", data={
            "grant_type": "client_credentials", "client_id": "demo-client", "client_secret": "demo-secret",
            "scope": "chat:start files:read"})).json()["access_token"]
        session = (await http.post("/sim/api/chat/start/", json={"chatbot_id": "6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23"},
                                   headers={"Authorization": f"Bearer {token}"})).json()
        task = (await http.post(f"/sim/api/chat/{session['session_id']}/message/", json={"message": "hi"},
                                headers=auth(session))).json()["task_id"]
        reply = (await http.get(f"/sim/api/chat/{session['session_id']}/{task}/poll/",
                                headers=auth(session))).json()
    assert reply["message"]["attachments"][0]["content_url"].startswith(f"{BASE}/sim/api/files/")


async def test_full_flow_under_uvicorn_with_real_clock() -> None:
    sim = SimulatorState.demo("http://127.0.0.1")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_simulator_app(sim), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            token = (await http.post("/o/token/", data={
                "grant_type": "client_credentials", "client_id": "demo-client",
                "client_secret": "demo-secret", "scope": "chat:start"})).json()["access_token"]
            session = (await http.post("/api/chat/start/", json={"chatbot_id": "6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23"},
                                       headers={"Authorization": f"Bearer {token}"})).json()
            task = (await http.post(f"/api/chat/{session['session_id']}/message/", json={"message": "ping"},
                                    headers=auth(session))).json()["task_id"]
            body: dict[str, Any] = {}
            for _ in range(50):
                body = (await http.get(f"/api/chat/{session['session_id']}/{task}/poll/",
                                       headers=auth(session))).json()
                if body["status"] == "complete":
                    break
                await asyncio.sleep(0.02)
        assert body["message"]["content"] == "Echo #1: ping"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
