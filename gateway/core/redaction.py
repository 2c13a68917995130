"""No secret in any log line, at any level: one ``logging.Filter`` on the root logger's handlers.

Libraries log what they hold: python-telegram-bot's ``telegram.Bot`` logger prints the Bot API
URL (which carries the bot token) at DEBUG, httpx logs every request URL, uvicorn's access log
writes the Slack OAuth redirect with its ``code`` and ``state``. Rather than taming each logger,
the filter sits on the handlers (a filter on a logger would miss its children's records) and
rewrites every record before it is formatted:

- every ``Secret`` value in the configuration, wherever it appears;
- token shapes that are not in the configuration: Telegram bot tokens (also inside
  ``/bot<token>/`` URLs), Slack ``xox?-``/``xapp-`` tokens (OAuth installs bring new ones),
  ``whsec_`` keys, ``Authorization`` values, ``Bearer`` tokens, ``X-Session-Token`` values,
  passwords in URLs (``redis://:pw@host``);
- OAuth values in URLs, forms and dict reprs: ``code``, ``state``, ``client_secret`` and
  ``*_token``; the Slack install routes lose their whole query string.

A record keeps its ``msg``/``args`` shape when redacting the parts is enough (uvicorn's access
formatter reads ``args`` as a tuple); otherwise it becomes one redacted string. Tracebacks are
rendered and redacted too. Handlers added after ``install_redaction`` are not covered: the CLI
installs it once logging is set up, and runs uvicorn without its own handlers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from gateway.core.config import GatewayConfig, Secret

__all__ = ["REDACTED", "RedactionFilter", "install_redaction", "secret_values"]

#: What a secret is replaced with.
REDACTED = "[redacted]"
#: Shorter configured values are not redacted: they would shred every line and protect nothing.
MIN_SECRET_CHARS = 4

#: A value up to the next delimiter, unless it is already a redaction (so that filtering twice,
#: once per handler, changes nothing).
_VALUE = r"(?!\[redacted\])[^\s&'\",;)}\]]+"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Telegram bot tokens (docs/PLATFORMS.md §1.1): "<bot id>:<35 chars>", also glued to "/bot".
    (re.compile(r"(?<![0-9])[0-9]{6,}:[A-Za-z0-9_-]{30,}"), REDACTED),
    # Slack bot/user/app/refresh tokens.
    (re.compile(r"\bxox[abeposr](?:\.xox[abposr])?-[A-Za-z0-9-]+"), REDACTED),
    (re.compile(r"\bxapp-[A-Za-z0-9-]+"), REDACTED),
    # Standard Webhooks keys.
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]+"), REDACTED),
    # Passwords in URLs: redis://:pw@host, https://user:pw@host.
    (re.compile(r"([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1" + REDACTED + "@"),
    # Slack's OAuth routes: the whole query string goes (code, state, error text).
    (re.compile(r"(/slack/[^/\s?]+/(?:install|oauth_redirect))\?[^\s'\"]*"), r"\1"),
    # Header values, in "Name: value", "'Name': 'value'" and "name=value" spellings.
    (re.compile(r"(?i)(authorization(?>['\"]?\s*[:=]\s*['\"]?)(?>(?:(?:bearer|basic|bot|token)\s+)?))" + _VALUE), r"\1" + REDACTED),
    (re.compile(r"(?i)(x-session-token(?>['\"]?\s*[:=]\s*['\"]?))" + _VALUE), r"\1" + REDACTED),
    # Cookies, whole: "Set-Cookie: a=b; Path=/" and httpcore's (b'set-cookie', b'…') tuples.
    (re.compile(r"(?i)(\b(?:set-)?cookie(?>['\"]?\s*[:,]\s*b?['\"]?))(?!\[redacted\])[^'\"\r\n]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)\b(bearer(?>\s+))(?!\[redacted\])[A-Za-z0-9._~+/=-]+"), r"\1" + REDACTED),
    # OAuth values in query strings and forms. code/state only right after ? or & (or at the
    # start of a form), so that our own "state=sending" stays readable.
    (re.compile(r"(?i)((?:^|[?&]|b?['\"])(?:code|state)=)" + _VALUE), r"\1" + REDACTED),
    (re.compile(r"(?i)\b((?:client_secret|secret|password|[a-z_]*token|[a-z_]*_state)=)" + _VALUE), r"\1" + REDACTED),
    # Prose that names the value: Bolt's "Failed to fetch oauth.v2.access result with code: <code>".
    (re.compile(r"(?i)(\b(?:with|oauth)\s+(?:code|state):\s*)" + _VALUE), r"\1" + REDACTED),
    # The same keys in dict reprs and JSON: {'code': '…'}, "access_token": "…".
    (
        re.compile(r"(?i)(['\"](?:code|state|client_secret|secret|password|[a-z_]*token)['\"]\s*:\s*b?['\"])[^'\"]*"),
        r"\1" + REDACTED,
    ),
)


def secret_values(config: GatewayConfig) -> frozenset[str]:
    """Every ``Secret`` value in ``config`` (bots, channels, anything added later), plus the key
    part of a ``whsec_`` secret, which is what the signing code decodes and might print."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, Secret):
            revealed = value.reveal()
            found.add(revealed)
            if revealed.startswith("whsec_"):
                found.add(revealed.removeprefix("whsec_"))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple, set, frozenset)):
            for item in value:
                walk(item)

    walk(config)
    return frozenset(s for s in found if len(s) >= MIN_SECRET_CHARS)


class RedactionFilter(logging.Filter):
    """Rewrites each record so that no known secret or token shape survives; never drops one."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        #: Longest first, so a secret that contains another is replaced whole.
        self.secrets: tuple[str, ...] = tuple(
            sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=lambda s: (-len(s), s))
        )
        self._literal = re.compile("|".join(map(re.escape, self.secrets))) if self.secrets else None

    def redact(self, text: str) -> str:
        """``text`` with every secret and token shape replaced."""
        if self._literal is not None:
            text = self._literal.sub(REDACTED, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format: logging would print msg and args raw
            record.msg, record.args = self.redact(f"{record.msg!s} {record.args!r}"), None
            message = None
        if message is not None:
            redacted = self.redact(message)
            if redacted != message:
                self._rewrite(record, redacted)
        if record.exc_info and not record.exc_text:
            # Formatter.format reuses exc_text when set, so the redacted traceback is what prints.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True

    def _rewrite(self, record: logging.LogRecord, redacted: str) -> None:
        """Redact msg and args each, keeping their shape; if that leaves anything (a secret
        split between the format and an argument), collapse to the redacted message."""
        if isinstance(record.msg, str):
            record.msg = self.redact(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {key: self._arg(value) for key, value in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(self._arg(value) for value in record.args)
        try:
            rebuilt = record.getMessage()
        except Exception:  # noqa: BLE001 - the format lost a placeholder to a redaction
            rebuilt = None
        if rebuilt is None or self.redact(rebuilt) != rebuilt:
            record.msg, record.args = redacted, None

    def _arg(self, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float)):
            return value  # keeps %d and %.2f working; numbers are not secrets here
        text = value if isinstance(value, str) else str(value)
        redacted = self.redact(text)
        return value if redacted == text else redacted


def install_redaction(
    config: GatewayConfig | None = None, *, logger: logging.Logger | None = None, extra_secrets: Iterable[str] = ()
) -> RedactionFilter:
    """Put one ``RedactionFilter`` on every handler of ``logger`` (default: the root logger).

    Called again (once the configuration is known, or by a second process set-up), it replaces
    the filter it installed before with one that knows the old and the new secrets.
    """
    target = logger or logging.getLogger()
    secrets = set(extra_secrets) | (secret_values(config) if config is not None else set())
    for handler in target.handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactionFilter)]:
            secrets.update(old.secrets)
    installed = RedactionFilter(secrets)
    for handler in target.handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactionFilter)]:
            handler.removeFilter(old)
        handler.addFilter(installed)
    return installed
