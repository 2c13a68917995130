"""Hostile input gets a 4xx, always (issue 8, "Bad input"): each request the fuzzing run found
answered 500 (or, for the webhook, accepted and then unsendable forever) is sent to the real edge
here, and must be refused with the exact status and nothing stored.

The edge runs without a worker: these tests are about what the edge answers and stores.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from adapters.webhook import signing
from gateway.core.config import Secret
from gateway.core.errors import PayloadInvalid
from gateway.core.models import ConversationKey, Inbound, InboundKind
from gateway.core.safe_json import MAX_DEPTH, loads
from tests.adapters._telegram import SECRET as TELEGRAM_SECRET
from tests.adapters._telegram import TOKEN
from tests.conftest import WEBHOOK_SECRET, Stack
from tests.fakes.slack_api import (
    FakeSlack,
    Workspace,
    event_envelope,
    fake_slack,
    signed_headers,
)
from tests.fakes.telegram_api import FakeTelegram, fake_telegram, message_update

__all__ = ["fake_slack", "fake_telegram"]

SLACK_SECRET = "hostile-signing-secret"
MakeStack = Callable[..., Stack]
#: Deeper than any interpreter stack: json.loads raised RecursionError on it.
DEEP = 100_000


def deep(levels: int = DEEP) -> str:
    return "[" * levels + "]" * levels


def stored(stack: Stack) -> list[bytes]:
    """Every inbox and turn key, and the active list: all empty when nothing was admitted."""
    keys = list(stack.redis.scan_iter(match="ocsgw:inbox:*")) + list(stack.redis.scan_iter(match="ocsgw:turn:*"))
    return keys + [b"active"] * stack.redis.zcard("ocsgw:active")


def refused(response: httpx.Response, status: int, stack: Stack) -> str:
    """Assert the exact status, a JSON reason, and an empty store; returns the reason."""
    assert response.status_code == status, response.text
    assert stored(stack) == []
    reason = response.json()["error"]
    assert isinstance(reason, str) and reason
    return reason


# -- the strict loader ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"n": NaN}', "NaN"),
        (b'{"n": Infinity}', "Infinity"),
        (b'{"n": -Infinity}', "-Infinity"),
        (b'{"n": 1e999}', "overflows"),
        (b'{"n": ' + b"9" * 5000 + b"}", "out of range"),
        (b'{"n": 9223372036854775808}', "out of range"),
        (deep().encode(), "deeper"),
        (deep(MAX_DEPTH + 1).encode(), "deeper"),
        (b'{"t": "\\ud800"}', "surrogate"),
        (b'{"t": "\xff\xfe"}', "UTF-8"),
        (b"[" * 10 + b"}" * 10, "balance"),
        # An unterminated string of escaped quotes: the depth scan once restarted at each quote.
        (b'"' + b'\\"' * 50_000, "Unterminated"),
    ],
    ids=lambda value: value[:24].decode(errors="replace") if isinstance(value, bytes) else value,
)
def test_strict_loader_refuses_what_cannot_be_carried_on(body: bytes, says: str) -> None:
    with pytest.raises(PayloadInvalid, match=says):
        loads(body)


def test_strict_loader_keeps_what_platforms_send() -> None:
    body = '{"id": -1001122334455, "ok": true, "x": 1.5, "e": "\\ud83d\\ude00", "s": "[{\\"", "n": null}'
    assert loads(body.encode()) == {"id": -1001122334455, "ok": True, "x": 1.5, "e": "😀", "s": '[{"', "n": None}
    assert loads(deep(MAX_DEPTH).encode()) is not None
    assert loads(b"-9223372036854775808") == -(2**63)


def test_stored_inbound_refuses_non_finite_numbers() -> None:
    inbound = Inbound(ConversationKey("hooks", "c1"), "e1", InboundKind.MESSAGE, "u1", "hi", context={"n": math.nan})
    with pytest.raises(ValueError):
        inbound.to_json()


# -- webhook ----------------------------------------------------------------------------------------


@pytest.fixture
def edge(make_stack: MakeStack) -> Stack:
    return make_stack(start_worker=False)


def webhook_body(context: str) -> bytes:
    return b'{"conversation_id": "c1", "sender": {"id": "u1"}, "text": "hi", "context": ' + context.encode() + b"}"


@pytest.mark.parametrize("value", ['{"n": NaN}', '{"n": 1e999}', '{"n": -Infinity}'])
def test_webhook_context_with_a_non_finite_number_is_refused(edge: Stack, value: str) -> None:
    reason = refused(edge.post_webhook(webhook_body(value)), 400, edge)
    assert "number" in reason or "overflows" in reason


def test_webhook_control_message_is_still_admitted(edge: Stack) -> None:
    # The same body with a finite number goes in: the refusal above is about the number.
    assert edge.post_webhook(webhook_body('{"n": 1e300}')).status_code == 200
    assert stored(edge) != []


# -- framing (RFC 9112 §6.3) -------------------------------------------------------------------


def raw_exchange(stack: Stack, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection, then read until the edge closes it."""
    address = urlsplit(stack.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            raise AssertionError(f"the edge kept the connection open; it had answered {answer[:200]!r}") from None
    return answer


WEBHOOK_JSON = b'{"conversation_id": "c1", "sender": {"id": "u1"}, "text": "hi"}'
#: What a proxy framing by Content-Length would pass on as the next request on the connection.
SMUGGLED = b"POST /webhooks/hooks HTTP/1.1\r\nHost: edge\r\nContent-Length: 0\r\n\r\n"


def signed_head(msg_id: str, framing: bytes) -> bytes:
    """A webhook request's head, signed for ``WEBHOOK_JSON``, with the given framing headers."""
    headers = signing.signed_headers(signing.decode_secret(WEBHOOK_SECRET), msg_id, WEBHOOK_JSON)
    return (
        b"POST /webhooks/hooks HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        + framing
        + b"".join(f"{name}: {value}\r\n".encode() for name, value in headers.items())
        + b"\r\n"
    )


@pytest.mark.parametrize(
    "body",
    [
        # Content-Length bytes of plain body: h11 read it as a chunk size and waited for ever.
        WEBHOOK_JSON,
        # A well-formed chunked body followed by a request of its own: admitted before.
        b"%x\r\n%s\r\n0\r\n\r\n%s" % (len(WEBHOOK_JSON), WEBHOOK_JSON, SMUGGLED),
    ],
    ids=["plain", "chunked-then-smuggled"],
)
def test_request_with_content_length_and_transfer_encoding_is_400_and_closed(edge: Stack, body: bytes) -> None:
    framing = b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(WEBHOOK_JSON)
    answer = raw_exchange(edge, signed_head("msg_framing", framing) + body)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert answer.count(b"HTTP/1.1 ") == 1  # nothing after the refusal was read as a request
    assert stored(edge) == []


def test_chunked_request_without_content_length_is_still_admitted(edge: Stack) -> None:
    head = signed_head("msg_chunked", b"Transfer-Encoding: chunked\r\nConnection: close\r\n")
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(WEBHOOK_JSON), WEBHOOK_JSON)
    assert raw_exchange(edge, head + body).startswith(b"HTTP/1.1 200 ")
    assert stored(edge) != []


# -- Telegram ---------------------------------------------------------------------------------------


@pytest.fixture
def tg_edge(fake_telegram: FakeTelegram, make_stack: MakeStack) -> Stack:
    fake_telegram.add_bot(TOKEN, username="clinic_bot")
    channel = {"type": "telegram", "bot": "demo", "token": Secret(TOKEN), "webhook_secret": Secret(TELEGRAM_SECRET),
               "api_base_url": fake_telegram.url}  # fmt: skip
    return make_stack(channels={"tg": channel}, start_worker=False)


def post_telegram(stack: Stack, body: str | bytes) -> httpx.Response:
    headers = {"content-type": "application/json", "X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
    return stack.http.post(f"{stack.url}/telegram/tg", content=body, headers=headers)


def telegram_text(update_id: int = 1, **fields: Any) -> dict[str, Any]:
    return message_update(update_id, chat_id=4242, user_id=4242, text="hello", **fields)


def test_telegram_date_out_of_range_is_refused(tg_edge: Stack) -> None:
    update = telegram_text()
    update["message"]["date"] = 1e20
    assert "message.date" in refused(post_telegram(tg_edge, json.dumps(update)), 400, tg_edge)


@pytest.mark.parametrize("date", [10**15, -(10**12), 2**62], ids=["year-31690708", "year-29719", "EOVERFLOW"])
def test_telegram_integer_date_outside_datetime_is_refused(tg_edge: Stack, date: int) -> None:
    update = telegram_text()
    update["message"]["date"] = date
    assert refused(post_telegram(tg_edge, json.dumps(update)), 400, tg_edge).startswith("message:")


def test_telegram_five_thousand_digit_integer_is_refused(tg_edge: Stack) -> None:
    body = json.dumps(telegram_text()).replace('"update_id": 1', '"update_id": ' + "7" * 5000)
    assert "out of range" in refused(post_telegram(tg_edge, body), 400, tg_edge)


def test_telegram_deep_nesting_is_refused(tg_edge: Stack) -> None:
    body = '{"update_id": 1, "message": {"message_id": 1, "x": ' + deep() + "}}"
    assert "deeper" in refused(post_telegram(tg_edge, body), 400, tg_edge)


def test_telegram_empty_my_chat_member_is_refused(tg_edge: Stack) -> None:
    body = json.dumps({"update_id": 1, "my_chat_member": {}})
    assert "my_chat_member" in refused(post_telegram(tg_edge, body), 400, tg_edge)
    assert tg_edge.redis.keys("ocsgw:conv:*") == []


def test_telegram_text_of_the_wrong_type_is_refused_by_name(tg_edge: Stack) -> None:
    update = telegram_text()
    update["message"]["text"] = 5
    assert "message.text" in refused(post_telegram(tg_edge, json.dumps(update)), 400, tg_edge)


def test_telegram_control_update_is_admitted(tg_edge: Stack) -> None:
    assert post_telegram(tg_edge, json.dumps(telegram_text())).status_code == 200
    assert stored(tg_edge) != []


# -- Slack ------------------------------------------------------------------------------------------


@pytest.fixture
def slack(fake_slack: FakeSlack, make_stack: MakeStack) -> tuple[Stack, Workspace]:
    ws = fake_slack.add_workspace("T100")
    channel = {"type": "slack", "bot": "demo", "signing_secret": Secret(SLACK_SECRET),
               "api_base_url": fake_slack.api_url, "bot_token": Secret(ws.token)}  # fmt: skip
    return make_stack(channels={"sl": channel}, start_worker=False), ws


def post_slack(stack: Stack, body: bytes, *, secret: str = SLACK_SECRET, **headers: str) -> httpx.Response:
    signed = {**signed_headers(secret, body), **headers}
    return stack.http.post(f"{stack.url}/slack/sl/events", content=body, headers=signed)


def slack_dm(ws: Workspace, **extra: Any) -> dict[str, Any]:
    event = {"type": "message", "channel": "D100", "channel_type": "im", "user": "UHUMAN", "text": "hi",
             "ts": "1700000001.000100", **extra}  # fmt: skip
    return event_envelope(event, team_id=ws.team_id, event_id="Ev1", bot_user_id=ws.user_id)


NOT_UTF8 = b'{"type": "event_callback", "event": {"text": "caf\xe9"}}'


def test_slack_non_utf8_body_with_a_wrong_signature_is_401(slack: tuple[Stack, Workspace]) -> None:
    stack, _ = slack
    refused(post_slack(stack, NOT_UTF8, secret="not-the-secret"), 401, stack)


def test_slack_non_utf8_body_with_a_good_signature_is_400(slack: tuple[Stack, Workspace]) -> None:
    stack, _ = slack
    assert "UTF-8" in refused(post_slack(stack, NOT_UTF8), 400, stack)


def test_slack_timestamp_of_a_thousand_digits_is_401(slack: tuple[Stack, Workspace]) -> None:
    stack, ws = slack
    body = json.dumps(slack_dm(ws)).encode()
    refused(post_slack(stack, body, **{"x-slack-request-timestamp": "9" * 1000}), 401, stack)


def test_slack_deep_nesting_is_refused(slack: tuple[Stack, Workspace]) -> None:
    stack, _ = slack
    body = ('{"type": "event_callback", "event": ' + deep() + "}").encode()
    assert "deeper" in refused(post_slack(stack, body), 400, stack)


def test_slack_files_that_are_not_a_list_are_refused(slack: tuple[Stack, Workspace]) -> None:
    stack, ws = slack
    body = json.dumps(slack_dm(ws, files=5, subtype="file_share")).encode()
    assert "files" in refused(post_slack(stack, body), 400, stack)


def test_slack_text_of_the_wrong_type_is_refused_by_name(slack: tuple[Stack, Workspace]) -> None:
    stack, ws = slack
    body = json.dumps(slack_dm(ws, text={"a": 1})).encode()
    assert "event.text" in refused(post_slack(stack, body), 400, stack)


def test_slack_slash_command_form_that_is_not_utf8_is_refused(slack: tuple[Stack, Workspace]) -> None:
    stack, _ = slack
    body = b"command=%2Freset&team_id=T100&channel_id=D1&trigger_id=\xff"
    headers = {"content-type": "application/x-www-form-urlencoded"}
    refused(post_slack(stack, body, **headers), 400, stack)


def test_slack_control_message_is_admitted(slack: tuple[Stack, Workspace]) -> None:
    stack, ws = slack
    assert post_slack(stack, json.dumps(slack_dm(ws)).encode()).status_code == 200
    assert stored(stack) != []


def test_oversized_body_is_413_before_any_check(slack: tuple[Stack, Workspace]) -> None:
    stack, _ = slack
    body = b'{"type": "url_verification", "challenge": "' + b"x" * (stack.config.max_body_bytes + 1) + b'"}'
    assert post_slack(stack, body).status_code == 413
    assert stored(stack) == []

