"""No secret in any log line (issue 8): the end-to-end flows of every channel run with the root
logger at DEBUG and a capturing handler installed the way the CLI installs the redaction filter;
then every captured line is searched for every configured secret, platform token, OCS token and
OAuth code/state. Libraries log at DEBUG what they hold (python-telegram-bot prints the Bot API
URL with the token, httpx every URL, uvicorn's access log the OAuth redirect's query)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette

from gateway.core.config import Secret
from gateway.core.logs import make_handler
from gateway.core.redaction import RedactionFilter, install_redaction, secret_values
from gateway.observe.health import ServicesProbe, health_routes
from tests.conftest import WEBHOOK_SECRET, SimServer, Stack, stack_config, wait_for
from tests.fakes.openai_audio import FakeOpenAIAudio, fake_speech
from tests.fakes.slack_api import FakeSlack, event_envelope, fake_slack, signed_headers
from tests.fakes.telegram_api import FakeTelegram, fake_telegram, message_update
from tests.support.audio import voice_note
from tests.support.servers import free_port

__all__ = ["fake_slack", "fake_speech", "fake_telegram"]

TELEGRAM_TOKEN = "5550001234:AAH-telegram-token_for-the-log-grep"
TELEGRAM_SECRET = "tg-webhook-secret-42"
SLACK_SIGNING = "slack-signing-secret-for-the-grep"
SLACK_CLIENT_SECRET = "slack-client-secret-for-the-grep"
SPEECH_KEY = "sk-speech-api-key-for-the-log-grep"
USER = 4242
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


class Capture(logging.Handler):
    """Keeps every formatted line, tracebacks included."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


_SDK_LOGGERS = ("httpx", "httpcore", "telegram", "slack_sdk", "slack_bolt", "aiohttp")


@pytest.fixture
def capture() -> Iterator[Capture]:
    root = logging.getLogger()
    handler = Capture()
    saved_level = root.level
    # Every SDK logger at DEBUG too, whatever an earlier test (the CLI quiets httpx) left behind.
    sdk_levels = {name: logging.getLogger(name).level for name in _SDK_LOGGERS}
    for name in _SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(saved_level)
    for name, level in sdk_levels.items():
        logging.getLogger(name).setLevel(level)
    for other in root.handlers:  # pytest's own handlers got the filter too
        for installed in [f for f in other.filters if isinstance(f, RedactionFilter)]:
            other.removeFilter(installed)
    for name in _UVICORN:
        logging.getLogger(name).propagate = name != "uvicorn.access" and name != "uvicorn"


def uvicorn_through_root() -> None:
    """What ``log_config=None`` gives the CLI's uvicorn: its loggers reach the root handlers.
    The harness's servers each configure uvicorn's own handlers, so this runs after they start."""
    for name in _UVICORN:
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
        logger.setLevel(logging.DEBUG)


@pytest.fixture
def everything(
    capture: Capture, fake_telegram: FakeTelegram, fake_slack: FakeSlack, fake_speech: FakeOpenAIAudio, sim: SimServer,
    make_stack: Callable[..., Stack],
) -> Stack:
    """One gateway with every channel kind: webhook ``hooks``, Telegram ``tg``, Slack ``sl``
    (one workspace, bot token) and Slack ``slo`` (OAuth install), and a speech service that
    speaks every answer, logging from its first line."""
    fake_telegram.add_bot(TELEGRAM_TOKEN, username="clinic_bot")
    fake_speech.api_keys = {SPEECH_KEY}
    fake_slack.client_secret = SLACK_CLIENT_SECRET
    workspace = fake_slack.add_workspace("T100")
    slack = {"type": "slack", "bot": "demo", "signing_secret": Secret(SLACK_SIGNING), "api_base_url": fake_slack.api_url}
    channels = {
        "tg": {"type": "telegram", "bot": "demo", "token": Secret(TELEGRAM_TOKEN),
               "webhook_secret": Secret(TELEGRAM_SECRET), "api_base_url": fake_telegram.url},
        "sl": {**slack, "bot_token": Secret(workspace.token)},
        "slo": {**slack, "client_id": fake_slack.client_id, "client_secret": Secret(SLACK_CLIENT_SECRET)},
    }  # fmt: skip
    # As the CLI: the filter goes on once logging is set up and the config is loaded, before
    # anything starts (PTB logs the token while the adapter starts). Same secrets as the stack's.
    bots = {"demo": {"speech": {"base_url": fake_speech.base_url, "api_key": Secret(SPEECH_KEY), "voice_replies": "always"}}}
    install_redaction(stack_config(sim.url, "http://127.0.0.1:9", channels=channels, bots=bots))
    return make_stack(channels=channels, bots=bots)


def test_debug_logs_of_every_channel_carry_no_secret(
    capture: Capture, everything: Stack, fake_telegram: FakeTelegram, fake_slack: FakeSlack, fake_speech: FakeOpenAIAudio
) -> None:
    stack = everything
    uvicorn_through_root()

    # Webhook round trip.
    assert stack.say("c1", "hello webhook").status_code == 200
    wait_for(lambda: stack.receiver.texts("c1"), what="the webhook reply")

    # Telegram update in, reply out through the fake Bot API.
    update = message_update(1, chat_id=USER, user_id=USER, text="hello telegram")
    response = stack.http.post(
        f"{stack.url}/telegram/tg", content=json.dumps(update),
        headers={"content-type": "application/json", "X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET},
    )  # fmt: skip
    assert response.status_code == 200
    wait_for(lambda: fake_telegram.sent_texts(USER, token=TELEGRAM_TOKEN), what="the Telegram reply")

    # A voice note: transcribed and answered in voice through the speech service and its key.
    fake_telegram.add_file("VOICE1", voice_note(0.5, title="hello by voice"), file_path="voice/file_1.oga")
    voice = {"file_id": "VOICE1", "file_unique_id": "uV1", "duration": 1, "mime_type": "audio/ogg", "file_size": 100}
    response = stack.http.post(
        f"{stack.url}/telegram/tg", content=json.dumps(message_update(2, chat_id=USER, user_id=USER, voice=voice)),
        headers={"content-type": "application/json", "X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET},
    )  # fmt: skip
    assert response.status_code == 200
    wait_for(lambda: len(fake_telegram.sent_voices(USER, token=TELEGRAM_TOKEN)) == 2, what="two voice replies")
    assert [c.auth for c in fake_speech.calls()] and all(c.auth == SPEECH_KEY for c in fake_speech.calls())

    # Slack event in, reply out through the fake Web API.
    event = {"type": "message", "channel": "D100", "channel_type": "im", "user": "UHUMAN", "text": "hello slack",
             "ts": "1700000001.000100"}
    raw = json.dumps(event_envelope(event, team_id="T100", event_id="Ev1", bot_user_id="UT100BOT")).encode()
    assert stack.http.post(f"{stack.url}/slack/sl/events", content=raw, headers=signed_headers(SLACK_SIGNING, raw)).status_code == 200
    wait_for(lambda: fake_slack.texts(channel="D100"), what="the Slack reply")

    # Slack OAuth install: our link, Slack's consent page, back to our redirect with code+state.
    with httpx.Client(base_url=stack.url, timeout=10) as browser:
        start = browser.get("/slack/slo/install")
        assert start.status_code == 302
        fake_slack.next_install_team = "T200"
        consent = httpx.get(start.headers["location"], timeout=10)
        back = httpx.URL(consent.headers["location"])
        code, state = back.params["code"], back.params["state"]
        browser.cookies.set("ocsgw_slack_state", state)
        done = browser.get(f"{back.path}?{back.query.decode()}")
        assert done.status_code == 200, done.text
    slack_tokens = [ws.token for ws in fake_slack.workspaces.values()]  # T100's and the installed T200's
    assert len(slack_tokens) == 2

    lines = capture.lines
    # The flows were logged at all: PTB's Bot logger, httpx and the access log were all heard.
    assert any(" telegram." in line for line in lines)
    assert any(" httpx " in line for line in lines)
    redirect_lines = [line for line in lines if "uvicorn.access" in line and "/slack/slo/oauth_redirect" in line]
    assert redirect_lines and not any("?" in line for line in redirect_lines)

    secrets = {
        *secret_values(stack.config),
        WEBHOOK_SECRET, TELEGRAM_TOKEN, TELEGRAM_SECRET, SLACK_SIGNING, SLACK_CLIENT_SECRET, "demo-secret",
        SPEECH_KEY, code, state, *slack_tokens,
        *stack.sim.state.tokens,  # OCS OAuth access tokens the simulator issued
    }  # fmt: skip
    leaks = {secret: line for secret in secrets for line in lines if secret in line}
    assert not leaks, f"secrets in the log: {leaks}"


async def test_health_answers_without_the_redis_address(capture: Capture) -> None:
    port = free_port()  # nothing listens: a real client, a real refusal
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=2)
    app = Starlette(routes=health_routes(lambda request: ServicesProbe(request.app.state.services)))
    app.state.services = SimpleNamespace(redis=client)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
            response = await http.get("/healthz")
    finally:
        await client.aclose()
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "reason": "redis unreachable"}
    assert str(port) not in response.text
    # The operator still learns where it failed, from the log.
    assert any(str(port) in line and "Redis unreachable" in line for line in capture.lines)



# -- the same, through the CLI's JSON handler (gateway/core/logs.py) ----------------------------

PRIVATE_USER = 987_654_321


@pytest.fixture
def json_lines(capture: Capture) -> Iterator[io.StringIO]:
    """The CLI's JSON handler on the root logger too; requested before ``everything`` so that
    its ``install_redaction`` covers this handler as the CLI's covers its own."""
    stream = io.StringIO()
    handler = make_handler("json", stream=stream)
    logging.getLogger().addHandler(handler)
    yield stream
    logging.getLogger().removeHandler(handler)


def test_json_logs_of_webhook_and_telegram_flows_carry_no_secret_text_or_user_id(
    json_lines: io.StringIO, everything: Stack, fake_telegram: FakeTelegram
) -> None:
    stack = everything
    uvicorn_through_root()
    assert stack.say("c1", "hello webhook").status_code == 200
    wait_for(lambda: stack.receiver.texts("c1"), what="the webhook reply")
    update = message_update(1, chat_id=PRIVATE_USER, user_id=PRIVATE_USER, text="hello telegram")
    response = stack.http.post(
        f"{stack.url}/telegram/tg", content=json.dumps(update),
        headers={"content-type": "application/json", "X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET},
    )  # fmt: skip
    assert response.status_code == 200
    wait_for(lambda: fake_telegram.sent_texts(PRIVATE_USER, token=TELEGRAM_TOKEN), what="the Telegram reply")

    lines = [line for line in json_lines.getvalue().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    # PTB's Bot logger was heard (its payloads withheld), and so were httpx and the access log.
    assert any(r["logger"].startswith("telegram.") for r in records)
    assert any(r["logger"] == "httpx" for r in records)
    assert any(r["logger"] == "uvicorn.access" for r in records)
    secrets = {
        *secret_values(stack.config), WEBHOOK_SECRET, TELEGRAM_TOKEN, TELEGRAM_SECRET, SLACK_SIGNING,
        SLACK_CLIENT_SECRET, SPEECH_KEY, "demo-secret", *stack.sim.state.tokens,
    }  # fmt: skip
    leaks = {secret: line for secret in secrets for line in lines if secret in line}
    assert not leaks, f"secrets in the JSON log: {leaks}"
    private = [line for line in lines if "hello telegram" in line or str(PRIVATE_USER) in line]
    assert not private, f"message text or the user's id in the JSON log: {private}"
