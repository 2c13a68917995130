"""Structured logs (gateway/core/logs.py): every line of a real turn — ours and the SDKs' —
carries the ids bound where the work happens; none carries message text, a platform user id or
a secret unless ``log_message_text`` asks for the text; two conversations driven at once never
get each other's ids; both formats render what they promise, also through the CLI."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dramatiq
import pytest
import redis.asyncio as aioredis

from gateway.cli import main
from gateway.core.keys import Keys
from gateway.core.logs import (
    LogFormat,
    bound,
    conversation_label,
    make_handler,
    set_message_text,
)
from gateway.core.metrics import Metrics
from gateway.core.models import ConversationKey, Inbound, InboundKind
from gateway.core.redaction import RedactionFilter, install_redaction, secret_values
from gateway.edge.inbound_metrics import counted_admit
from gateway.store.inbox import Admitter
from gateway.store.traffic import TrafficRecorder
from tests.conftest import (
    WEBHOOK_SECRET,
    SimServer,
    Stack,
    settled,
    stack_config,
    wait_for,
)

#: Distinctive enough that finding them in a line cannot be a coincidence.
CONVERSATION = "conv-private-7f3a"
TEXT = "zebra crossing plans for thursday"
_SDK_LOGGERS = ("httpx", "httpcore", "telegram", "slack_sdk", "slack_bolt", "dramatiq")


@dataclass
class Captured:
    handler: logging.Handler
    stream: io.StringIO

    def lines(self) -> list[str]:
        return [line for line in self.stream.getvalue().splitlines() if line.strip()]

    def records(self) -> list[dict[str, Any]]:
        """Every line parsed; a line that is not one JSON object fails the test here."""
        parsed = [json.loads(line) for line in self.lines()]
        assert all(isinstance(item, dict) for item in parsed)
        return parsed


@pytest.fixture
def capture(sim: SimServer) -> Iterator[Callable[[LogFormat], Captured]]:
    """``capture(fmt)``: the CLI's handler (``make_handler``) on the root logger at DEBUG with
    the CLI's redaction installed over it, SDK loggers opened up (the CLI quiets httpx)."""
    root = logging.getLogger()
    saved_level = root.level
    sdk_levels = {name: logging.getLogger(name).level for name in _SDK_LOGGERS}
    added: list[logging.Handler] = []

    def start(fmt: LogFormat) -> Captured:
        stream = io.StringIO()
        handler = make_handler(fmt, stream=stream)
        root.addHandler(handler)
        added.append(handler)
        root.setLevel(logging.DEBUG)
        for name in _SDK_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        install_redaction(stack_config(sim.url, "http://127.0.0.1:9"))
        return Captured(handler, stream)

    yield start
    for handler in added:
        root.removeHandler(handler)
    root.setLevel(saved_level)
    for name, level in sdk_levels.items():
        logging.getLogger(name).setLevel(level)
    for other in root.handlers:  # pytest's own handlers got the filter too
        for installed in [f for f in other.filters if isinstance(f, RedactionFilter)]:
            other.removeFilter(installed)


def _label(conversation: str, *, reveal: bool = False) -> str:
    return conversation_label(ConversationKey("hooks", conversation), reveal=reveal)


def _turn(stack: Stack, conversation: str, text: str, msg_id: str) -> None:
    assert stack.say(conversation, text, msg_id=msg_id).status_code == 200
    wait_for(lambda: stack.receiver.texts(conversation), what=f"the reply in {conversation}")


def test_json_lines_of_a_real_turn_carry_its_ids_sdk_lines_too(
    capture: Callable[[LogFormat], Captured], make_stack: Callable[..., Stack]
) -> None:
    captured = capture("json")
    stack = make_stack()
    _turn(stack, CONVERSATION, TEXT, "msg_ids_1")
    # The same event again: the edge's "duplicate event" line, with the edge's ids.
    assert stack.say(CONVERSATION, TEXT, msg_id="msg_ids_1").status_code == 200
    settled(stack.redis)
    records = captured.records()
    label = _label(CONVERSATION)

    duplicate = [r for r in records if r["event"] == "duplicate event"]
    assert duplicate and duplicate[0] | {
        "channel": "hooks", "kind": "webhook", "event_id": "msg_ids_1", "conversation": label,
    } == duplicate[0]  # fmt: skip

    turn_lines = [r for r in records if r.get("event_id") == "msg_ids_1" and "turn" in r]
    assert turn_lines, "no worker line carried the turn"
    assert {r["conversation"] for r in turn_lines} == {label}
    assert {r["bot"] for r in turn_lines} == {"demo"}
    assert {r["channel"] for r in turn_lines} == {"hooks"}
    done = [r for r in turn_lines if r["event"].startswith("turn done")]
    assert done and done[0]["logger"] == "ocsgw.turns" and done[0].get("task_id")
    task_id = done[0]["task_id"]
    # The SDK's own lines (httpx, one per request) were made inside the turn and carry its ids:
    # the task poll to OCS and the callback to the platform both name the task.
    sdk = [r for r in turn_lines if r["logger"] == "httpx" and r.get("task_id") == task_id]
    assert any(task_id in r["event"] for r in sdk), "the OCS task poll line lacks the ids"
    assert len(sdk) >= 2
    for record in records:
        assert record["timestamp"].endswith("Z") and "T" in record["timestamp"]
        assert {"level", "logger", "event"} <= record.keys()


@pytest.mark.parametrize("reveal", [False, True], ids=["text-off", "text-on"])
def test_no_line_holds_text_user_id_or_secret_unless_text_is_asked_for(
    reveal: bool, capture: Callable[[LogFormat], Captured], make_stack: Callable[..., Stack]
) -> None:
    captured = capture("json")
    stack = make_stack(log_message_text=reveal)
    set_message_text(reveal)  # what the CLI does once the configuration is loaded
    _turn(stack, CONVERSATION, TEXT, "msg_private_1")
    settled(stack.redis)
    lines = captured.lines()
    captured.records()  # and every one of them is JSON
    secrets = {*secret_values(stack.config), WEBHOOK_SECRET, "demo-secret", *stack.sim.state.tokens}
    assert not {s: line for s in secrets for line in lines if s in line}, "a secret in the log"
    with_text = [line for line in lines if TEXT in line]
    with_user = [line for line in lines if f"user-{CONVERSATION}" in line or CONVERSATION in line]
    if reveal:
        assert with_text, "log_message_text is on, yet the text was never logged"
        assert any(_label(CONVERSATION, reveal=True) in line for line in lines)
    else:
        assert not with_text, f"message text in the log: {with_text}"
        assert not with_user, f"the conversation or user id in the log: {with_user}"
        assert any(_label(CONVERSATION) in line for line in lines)


def test_two_conversations_at_once_never_get_each_others_ids(
    capture: Callable[[LogFormat], Captured], make_stack: Callable[..., Stack]
) -> None:
    captured = capture("json")
    stack = make_stack()
    stack.sim.state.knobs.reply_latency_s = 0.4  # both turns wait on OCS at the same time
    events = {"conv-a": "msg_conc_a", "conv-b": "msg_conc_b"}
    for conversation, msg_id in events.items():
        assert stack.say(conversation, "hello", msg_id=msg_id).status_code == 200
    for conversation in events:
        wait_for(lambda c=conversation: stack.receiver.texts(c), what=f"the reply in {conversation}")
    settled(stack.redis)
    records = captured.records()
    labels = {_label(c): msg_id for c, msg_id in events.items()}
    seen: dict[str, set[str]] = {label: set() for label in labels}
    for record in records:
        if "turn" not in record:
            continue
        assert record["event_id"] == labels[record["conversation"]], f"ids of two conversations on one line: {record}"
        seen[record["conversation"]].add(record["logger"])
    # Both were driven, each with SDK lines of its own.
    assert all("httpx" in loggers and "ocsgw.turns" in loggers for loggers in seen.values()), seen
    tasks: dict[str, set[str]] = {}
    for record in records:
        if record.get("task_id"):
            tasks.setdefault(record["task_id"], set()).add(record["conversation"])
    assert len(tasks) == 2 and all(len(convs) == 1 for convs in tasks.values()), tasks


def test_text_format_renders_key_value_ids(capture: Callable[[LogFormat], Captured]) -> None:
    captured = capture("text")
    with bound(channel="hooks", conversation="abc123", turn="t-1", event_id=None):
        logging.getLogger("ocsgw.test").info("step took %d ms", 12)
    (line,) = captured.lines()
    assert "step took 12 ms" in line and "[ocsgw.test]" in line
    assert "channel=hooks conversation=abc123 turn=t-1" in line
    assert "event_id" not in line  # unbound (None) ids are left out
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_bound_values_and_tracebacks_are_redacted_in_json(capture: Callable[[LogFormat], Captured]) -> None:
    captured = capture("json")
    with bound(channel="hooks", task_id=WEBHOOK_SECRET):
        try:
            raise RuntimeError(f"callback refused, key {WEBHOOK_SECRET}")
        except RuntimeError:
            logging.getLogger("ocsgw.test").exception("failed with demo-secret")
    (record,) = captured.records()
    assert record["task_id"] == "[redacted]"
    assert "demo-secret" not in record["event"] and "RuntimeError" in record["exception"]
    assert WEBHOOK_SECRET not in json.dumps(record)


def test_sdk_payload_dumps_are_withheld_until_text_is_asked_for(capture: Callable[[LogFormat], Captured]) -> None:
    captured = capture("json")
    ptb = logging.getLogger("telegram.Bot")
    slack = logging.getLogger("slack_sdk.web.async_base_client")

    def emit() -> None:
        ptb.debug("Calling Bot API endpoint `%s` with parameters `%s`", "sendMessage", {"chat_id": 4242, "text": TEXT})
        slack.debug(f"Sending a request - url: POST https://slack.com/api/chat.postMessage, json: {{'text': '{TEXT}'}}")

    emit()
    withheld = captured.records()
    assert [r["event"] for r in withheld] == [
        "Calling Bot API endpoint `[withheld]` with parameters `[withheld]`",
        "Sending a request - url: [withheld]",
    ]
    set_message_text(True)
    emit()
    shown = captured.records()[2:]
    assert all(TEXT in r["event"] for r in shown) and "4242" in shown[0]["event"]


@pytest.mark.parametrize("how", ["option", "env"])
def test_cli_log_format_switch(how: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    monkeypatch.setenv("OCS_GATEWAY_CONFIG", "/nonexistent/gateway.yaml")
    argv = ["check-config"]
    if how == "option":
        argv = ["--log-format", "text", *argv]
    else:
        monkeypatch.setenv("OCS_GATEWAY_LOG_FORMAT", "json")
    try:
        main(argv)  # fails for want of a config, after setting logging up
        with bound(channel="hooks", turn="t-9"):
            logging.getLogger("ocsgw.test").warning("from the CLI's handler")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    lines = [line for line in capsys.readouterr().err.splitlines() if "from the CLI's handler" in line]
    assert len(lines) == 1
    if how == "option":
        assert "channel=hooks turn=t-9" in lines[0]
    else:
        assert json.loads(lines[0])["turn"] == "t-9"


def test_a_listeners_lines_carry_its_channel_and_each_events_ids(
    capture: Callable[[LogFormat], Captured], redis_url: str
) -> None:
    # Socket Mode and long polling have no request to bind ids to: the edge binds the channel
    # around the listener's task and counted_admit binds each event's ids while it is stored.
    captured = capture("json")
    event = Inbound(ConversationKey("tg", CONVERSATION), event_id="update-77", kind=InboundKind.MESSAGE, sender_id="7")

    async def listen_twice() -> None:
        client = aioredis.Redis.from_url(redis_url)
        keys = Keys("listener-logs")
        admit = counted_admit(Admitter(client, keys, dedup_ttl_s=60, wake=None), Metrics(),
                              TrafficRecorder(client, keys, ["tg"]), channel="tg", kind="telegram")

        async def listener() -> None:
            await admit(event)
            await admit(event)  # redelivered: logged as a duplicate
            logging.getLogger("telegram.ext").info("an SDK line from inside the listener")

        try:
            with bound(channel="tg", kind="telegram"):
                task = asyncio.create_task(listener())
            await task
        finally:
            await client.aclose()

    asyncio.run(listen_twice())
    records = captured.records()
    (duplicate,) = [r for r in records if r["event"] == "duplicate event"]
    label = conversation_label(event.key)
    assert (duplicate["channel"], duplicate["event_id"], duplicate["conversation"]) == ("tg", "update-77", label)
    (sdk,) = [r for r in records if r["event"] == "an SDK line from inside the listener"]
    assert sdk["channel"] == "tg" and "event_id" not in sdk
    assert CONVERSATION not in captured.stream.getvalue()


def test_dramatiq_lines_keep_their_arguments_but_not_the_messages_they_print(capture: Callable[[LogFormat], Captured]) -> None:
    """A Dramatiq message renders as its actor's call (ours carries the conversation key): only
    that is withheld; a connection error's text is what an operator needs, and stays."""
    captured = capture("json")
    consumer = logging.getLogger("dramatiq.worker.ConsumerThread(default)")
    worker = logging.getLogger("dramatiq.worker.WorkerThread")
    message: dramatiq.Message[Any] = dramatiq.Message(queue_name="default", actor_name="advance", args=(CONVERSATION,), kwargs={}, options={})
    refused = ConnectionError("Error 111 connecting to redis:6379. Connection refused.")

    def emit() -> None:
        consumer.critical("Consumer encountered a connection error: %s", refused)
        worker.error("Failed to process message %s with unhandled exception.", message)
        worker.warning("Failed to post_process_message(%s) due to a connection error: %s", message, refused)

    emit()
    assert [r["event"] for r in captured.records()] == [
        "Consumer encountered a connection error: Error 111 connecting to redis:6379. Connection refused.",
        "Failed to process message [withheld] with unhandled exception.",
        "Failed to post_process_message([withheld]) due to a connection error: " + str(refused),
    ]
    set_message_text(True)
    emit()
    assert CONVERSATION in captured.records()[4]["event"]


@pytest.mark.parametrize("level", ["verbose", "10"])
def test_an_invalid_log_level_is_a_usage_error_naming_the_valid_ones(
    level: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_LEVEL", level)
    with pytest.raises(SystemExit) as exited:
        main(["check-config"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "DEBUG, INFO, WARNING, ERROR, CRITICAL" in err and repr(level) in err
