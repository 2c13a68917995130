"""The redaction filter on crafted records: configured secrets and token shapes go, wherever they
sit (format string, arguments, dict arguments, tracebacks), and everything else is left as it was
(numbers still format with %d, uvicorn's access formatter still gets its five arguments)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from uvicorn.logging import AccessFormatter

from gateway.config_loading import GatewayConfig
from gateway.core.config import Secret
from gateway.core.redaction import (
    REDACTED,
    RedactionFilter,
    install_redaction,
    secret_values,
)
from gateway.ocs.simulator import DEMO_CHATBOT_ID

TG_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


def _record(msg: Any, *args: Any, exc_info: Any = None, name: str = "test") -> logging.LogRecord:
    return logging.LogRecord(name, logging.DEBUG, __file__, 1, msg, args or None, exc_info)


def _redacted(msg: Any, *args: Any, secrets: tuple[str, ...] = ()) -> str:
    record = _record(msg, *args)
    assert RedactionFilter(secrets).filter(record) is True  # never drops a record
    return record.getMessage()


def _config() -> GatewayConfig:
    return GatewayConfig.from_mapping({
        "bots": {"demo": {"chatbot_id": DEMO_CHATBOT_ID, "auth": "oauth", "client_id": "cid",
                          "client_secret": Secret("ocs-client-secret-1")}},
        "channels": {
            "hooks": {"type": "webhook", "bot": "demo", "secret": Secret("whsec_c2VjcmV0LWtleS1ieXRlcw=="),
                      "callback_url": "https://app.example.com/cb"},
            "tg": {"type": "telegram", "bot": "demo", "token": Secret("42:short-token"),
                   "webhook_secret": Secret("tg-hook-secret")},
            "sl": {"type": "slack", "bot": "demo", "signing_secret": Secret("slack-signing-1"),
                   "bot_token": Secret("xoxb-1-2-abc")},
        },
    })  # fmt: skip


def test_every_secret_in_the_config_is_found() -> None:
    assert secret_values(_config()) == {
        "ocs-client-secret-1", "whsec_c2VjcmV0LWtleS1ieXRlcw==", "c2VjcmV0LWtleS1ieXRlcw==",
        "42:short-token", "tg-hook-secret", "slack-signing-1", "xoxb-1-2-abc",
    }  # fmt: skip


def test_configured_secret_goes_from_format_and_arguments() -> None:
    secrets = tuple(secret_values(_config()))
    line = _redacted("token 42:short-token in %s and %r", "url /bot42:short-token/getMe", {"k": "tg-hook-secret"}, secrets=secrets)
    assert "42:short-token" not in line and "tg-hook-secret" not in line
    assert line.startswith(f"token {REDACTED} in url /bot{REDACTED}/getMe")


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        (f"Set Bot API URL: https://api.telegram.org/bot{TG_TOKEN}/getMe", TG_TOKEN),
        (f"token={TG_TOKEN}", TG_TOKEN),
        ("posting with xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy", "pdFZKVeTuE8sk7oOcBrzbqgy"),
        ("user token xoxp-1-2-3-abcdef and refresh xoxe.xoxp-1-deadbeef", "deadbeef"),
        ("socket mode xapp-1-A0123-456-abcdef0123", "abcdef0123"),
        ("secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi"),
        ("headers {'Authorization': 'Basic Y2lkOmNzZWNyZXQ=', 'Accept': '*/*'}", "Y2lkOmNzZWNyZXQ="),
        ("headers {'X-Session-Token': 'eyJzaWQiOiJhIn0:6f:c2ln'}", "eyJzaWQiOiJhIn0"),
        ("X-Session-Token: abc123sessiontoken", "abc123sessiontoken"),
        ("GET https://gw/cb?code=4724.abc-CODE&state=STATE-xyz", "CODE"),
        ("GET https://gw/cb?code=4724.abc-CODE&state=STATE-xyz", "STATE-xyz"),
        ("body b'client_id=1&client_secret=SHHH&code=C0DE'", "SHHH"),
        ("body b'client_id=1&client_secret=SHHH&code=C0DE'", "C0DE"),
        ("params {'code': 'C0DE', 'redirect_uri': 'https://gw'}", "C0DE"),
        ('json {"access_token": "at-123", "refresh_token": "rt-456"}', "at-123"),
        ("set-cookie ocsgw_slack_state=CSRF-state-1; Path=/", "CSRF-state-1"),
        ("(b'set-cookie', b'sid=abc; HttpOnly')", "sid=abc"),
        ("connecting to redis://:hunter2@10.0.0.5:6379/0", "hunter2"),
        # slack_bolt's AsyncOAuthFlow when oauth.v2.access fails.
        ("Failed to fetch oauth.v2.access result with code: 1234.5678.0a1b2c - error: internal_error", "0a1b2c"),
    ],
)
def test_token_shapes_are_redacted(text: str, gone: str) -> None:
    line = _redacted("%s", text)
    assert gone not in line and REDACTED in line


@pytest.mark.parametrize(
    "path", ["/slack/sl/oauth_redirect?code=C1&state=S1", "/slack/sl/install?team=T1", "/slack/sl/oauth_redirect?error=access_denied"]
)
def test_slack_oauth_routes_lose_their_query_string(path: str) -> None:
    route = path.split("?")[0]
    assert _redacted('127.0.0.1:5 - "GET %s HTTP/1.1" 200', path) == f'127.0.0.1:5 - "GET {route} HTTP/1.1" 200'


def test_ordinary_lines_are_left_alone() -> None:
    record = _record("turn conv=%s state=%s attempt %d took %.2f s", "hooks/c1", "sending", 3, 0.25)
    args = record.args
    RedactionFilter(("s3cret",)).filter(record)
    assert record.args is args
    assert record.getMessage() == "turn conv=hooks/c1 state=sending attempt 3 took 0.25 s"


def test_redacting_twice_changes_nothing() -> None:
    text = "GET /x?state=abc Authorization: Bearer t0k, (b'set-cookie', b'a=b') xoxb-1-2"
    once = RedactionFilter().redact(text)
    assert RedactionFilter().redact(once) == once


def test_uvicorn_access_record_keeps_its_arguments_for_the_access_formatter() -> None:
    record = _record('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/slack/sl/oauth_redirect?code=C&state=S", "1.1", 200,
                     name="uvicorn.access")  # fmt: skip
    RedactionFilter().filter(record)
    assert isinstance(record.args, tuple) and len(record.args) == 5
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False).format(record)
    assert line == '127.0.0.1:5000 - "GET /slack/sl/oauth_redirect HTTP/1.1" 200 OK'


def test_secret_split_between_format_and_argument_is_caught() -> None:
    assert _redacted("GET /cb?code=%s", "abc") == f"GET /cb?code={REDACTED}"


def test_traceback_is_redacted() -> None:
    try:
        raise RuntimeError(f"POST https://api.telegram.org/bot{TG_TOKEN}/sendMessage failed")
    except RuntimeError:
        import sys

        record = _record("send failed", exc_info=sys.exc_info())
    RedactionFilter().filter(record)
    line = logging.Formatter("%(message)s").format(record)
    assert "Traceback" in line and TG_TOKEN not in line


def test_record_whose_format_is_broken_does_not_leak_through_handle_error() -> None:
    record = _record("only one %s %s", "xoxb-9-9-secretsecret")
    RedactionFilter().filter(record)
    assert "secretsecret" not in str(record.msg) and record.args is None


def test_short_configured_values_are_ignored() -> None:
    assert _redacted("a b c abc", secrets=("a", "abc")) == "a b c abc"


@pytest.fixture
def logger_with_handler() -> Iterator[tuple[logging.Logger, list[str]]]:
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    logger = logging.getLogger("redaction-test-root")
    logger.setLevel(logging.DEBUG)
    handler = Keep()
    logger.addHandler(handler)
    yield logger, lines
    logger.removeHandler(handler)


def test_installed_on_handlers_it_covers_child_loggers_and_merges_secrets(
    logger_with_handler: tuple[logging.Logger, list[str]],
) -> None:
    logger, lines = logger_with_handler
    install_redaction(logger=logger, extra_secrets=("first-secret",))
    installed = install_redaction(_config(), logger=logger)
    (handler,) = logger.handlers
    assert [f for f in handler.filters if isinstance(f, RedactionFilter)] == [installed]
    # A child logger (like telegram.Bot under telegram) has no filter of its own.
    logger.getChild("telegram.Bot").debug("Set Bot API URL: http://x/bot%s first-secret", "42:short-token")
    assert lines == [f"Set Bot API URL: http://x/bot{REDACTED} {REDACTED}"]
