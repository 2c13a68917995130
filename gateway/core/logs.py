"""Logging for every process: one handler on the root logger whose ``structlog`` formatter renders
our own lines and the SDKs' (httpx, httpcore, python-telegram-bot, slack_sdk, dramatiq, uvicorn)
alike, each carrying the ids bound where the work happens (``structlog.contextvars``).

Our modules keep ``logging.getLogger(...)``; what they add is context, bound at the few places
that start a unit of work (the edge per request and per event, the turn runner per
conversation, the turn engine per step)::

    with bound(channel="hooks", event_id="e-1"):
        log.info("duplicate event")      # ... "event": "duplicate event", "channel": "hooks", ...

Contextvars follow asyncio tasks, so the ids bound in one conversation's coroutine never reach
another's lines, and the SDK calls made inside it log with its ids.

Formats: ``json`` (one object per line, for collectors) and ``text`` (``key=value``, for a
terminal); by default json unless stderr is a TTY. Every value, bound ids and rendered
tracebacks included, goes through the handler's ``RedactionFilter`` (gateway/core/redaction.py)
before it is rendered, so a secret cannot slip in through the context or JSON escaping.

Privacy (``log_message_text``, off by default): conversation keys are logged as a short stable
hash (``conversation_label``; they may hold a chat or user id), and the payload dumps that SDKs
write at DEBUG (python-telegram-bot's Bot API parameters and results, slack_sdk's request and
response bodies, Socket Mode envelopes — message text and user ids) are withheld, as are the
Dramatiq messages its lines print (a message renders as its actor's call, and our actor's
argument is the conversation key) and the arguments its per-actor loggers print. Dramatiq's
other arguments (queue names, message ids, Redis errors) are kept: they are what an operator
needs, and they pass through redaction like every value.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, Literal, get_args

import structlog
from dramatiq import Message
from dramatiq.broker import MessageProxy
from structlog.typing import EventDict, Processor, WrappedLogger

from gateway.core.models import ConversationKey
from gateway.core.redaction import RedactionFilter

__all__ = [
    "CONTEXT_KEYS",
    "LogFormat",
    "LogFormatter",
    "WITHHELD",
    "bind",
    "bound",
    "configure_logging",
    "conversation_label",
    "default_format",
    "make_handler",
    "set_message_text",
]

LogFormat = Literal["json", "text"]

#: The ids a line may carry, in the order they are rendered after the event.
CONTEXT_KEYS: tuple[str, ...] = ("channel", "kind", "bot", "conversation", "event_id", "turn", "task_id")
#: What replaces an SDK's payload while message text is not logged.
WITHHELD = "[withheld]"
#: Loggers that print payloads, and up to which level: the SDKs dump request and response
#: bodies (message text, user ids) at DEBUG; Dramatiq's per-actor loggers print the call's
#: arguments (our actor's is the conversation key).
_PAYLOAD_LOGGERS: dict[str, int] = {
    "telegram": logging.DEBUG,
    "slack_sdk": logging.DEBUG,
    "slack_bolt": logging.DEBUG,
    "adapters.slack.socket_mode.sdk": logging.DEBUG,  # slack_sdk's Socket Mode client, given our logger
    "workers.actors": logging.CRITICAL,  # Dramatiq's per-actor loggers are named after the module
}
#: Dramatiq's own loggers: at every level, only the arguments that are messages are withheld
#: ("Failed to process message %s ..."); a connection error's text stays.
_MESSAGE_LOGGERS = ("dramatiq",)
#: Hex digits of the conversation hash: enough to tell a deployment's conversations apart.
_LABEL_HEX = 12
#: Keys rendered first, so a line reads the same way in every format.
_HEAD = ("timestamp", "level", "logger", "event")


def default_format(stream: IO[str] | None = None) -> LogFormat:
    """``text`` for a person at a terminal, ``json`` for anything collecting the output."""
    target = stream if stream is not None else sys.stderr
    isatty = getattr(target, "isatty", None)
    return "text" if callable(isatty) and isatty() else "json"


def conversation_label(key: ConversationKey | str, *, reveal: bool = False) -> str:
    """How a conversation key appears in logs: itself when ``reveal`` (``log_message_text``),
    else the first hex digits of its SHA-256. The key may hold a Telegram chat id (a user's
    id, in a private chat) or a Slack DM; the hash is stable, so an operator who knows a key
    can still find its lines (``sha256(b"channel/conversation")``)."""
    text = str(key)
    if reveal:
        return text
    return hashlib.sha256(text.encode()).hexdigest()[:_LABEL_HEX]


@contextlib.contextmanager
def bound(**ids: Any) -> Iterator[None]:
    """Carry ``ids`` on every line logged inside the block (this task or thread only);
    ``None`` and empty values are left out. Restores what was bound before on exit."""
    present = {key: value for key, value in ids.items() if value is not None and value != ""}
    # Tokens, not structlog's bound_contextvars: that one copies the whole context to save what
    # it overwrites, a cost the edge paid twice per request; a token restores exactly that var.
    tokens = structlog.contextvars.bind_contextvars(**present)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def bind(**ids: Any) -> None:
    """Carry ``ids`` on every later line of this task or thread (for a task's whole life; a
    task's context is its own copy, so nothing leaks to the task that created it)."""
    structlog.contextvars.bind_contextvars(
        **{key: value for key, value in ids.items() if value is not None and value != ""}
    )


class LogFormatter(structlog.stdlib.ProcessorFormatter):
    """The one formatter: foreign (stdlib) and structlog records alike get the timestamp, the
    level, the logger name and the bound ids; then privacy, redaction, rendering.

    ``message_text`` mirrors the configuration's ``log_message_text`` (``set_message_text``);
    ``handler`` is whose ``RedactionFilter`` redacts the values (``install_redaction`` replaces
    the filter as secrets become known, so it is looked up per line)."""

    def __init__(self, log_format: LogFormat, *, message_text: bool = False) -> None:
        if log_format not in get_args(LogFormat):
            raise ValueError(f"log format must be one of {get_args(LogFormat)}, not {log_format!r}")
        self.log_format: LogFormat = log_format
        self.message_text = message_text
        self.handler: logging.Handler | None = None
        renderer: Processor
        if log_format == "json":
            renderer = structlog.processors.JSONRenderer(default=str)
        else:
            renderer = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0, sort_keys=False)
        super().__init__(
            pass_foreign_args=True,  # the payload check below needs a record's own args
            foreign_pre_chain=_stamp_chain(),
            processors=[
                self._withhold_payloads,
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                self._redact,
                _ordered,
                renderer,
            ],
        )

    def _withhold_payloads(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        record = event_dict.get("_record")
        args = event_dict.pop("positional_args", None)
        if self.message_text or not isinstance(record, logging.LogRecord):
            return event_dict
        if _is_under(record.name, _MESSAGE_LOGGERS):
            if isinstance(args, tuple) and isinstance(record.msg, str) and any(map(_is_message, args)):
                event_dict["event"] = _without_args(record.msg, args, withhold=_is_message)
            return event_dict
        if record.levelno > _withheld_up_to(record.name):
            return event_dict
        if args and isinstance(record.msg, str):
            # PTB: "Calling Bot API endpoint `%s` with parameters `%s`": keep the sentence only.
            event_dict["event"] = _without_args(record.msg, args)
        else:
            # slack_sdk builds its lines with f-strings: "Sending a request - url: ..., json: {...}".
            head, colon, _ = str(event_dict.get("event", "")).partition(":")
            if colon:
                event_dict["event"] = f"{head}: {WITHHELD}"
        return event_dict

    def _redact(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        redactor = _redactor(self.handler)
        if redactor is None:
            return event_dict
        return {key: _redacted(value, redactor) for key, value in event_dict.items()}


#: One printf-style placeholder, as ``logging`` formats them.
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa%]")


def _without_args(template: str, args: Any, *, withhold: Callable[[Any], bool] | None = None) -> str:
    """``template`` with each argument withheld, except floats (timings: "Completed after
    %.02fms."); ids are ints and strings, payloads dicts. With ``withhold``, only the arguments
    it picks are withheld and the others are formatted as ``logging`` would."""
    values = list(args) if isinstance(args, tuple) else []

    def fill(match: re.Match[str]) -> str:
        spec = match.group(0)
        if spec == "%%":
            return "%"
        value = values.pop(0) if values else None
        if withhold is not None and not withhold(value) and "(" not in spec and "*" not in spec:
            try:
                return spec % (value,)
            except (TypeError, ValueError):
                return WITHHELD
        if isinstance(value, float) and "(" not in spec:
            try:
                return spec % value
            except (TypeError, ValueError):
                pass
        return WITHHELD

    return _PLACEHOLDER.sub(fill, template)


def _is_message(value: Any) -> bool:
    """A Dramatiq message, or the worker's proxy of one: it renders as ``actor(args)``."""
    return isinstance(value, (Message, MessageProxy))


def _is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _withheld_up_to(name: str) -> int:
    for prefix, level in _PAYLOAD_LOGGERS.items():
        if name == prefix or name.startswith(prefix + "."):
            return level
    return logging.NOTSET - 1  # below every level: nothing withheld


def _stamp_chain() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _ordered(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    head = {key: event_dict[key] for key in _HEAD if key in event_dict}
    ids = {key: event_dict[key] for key in CONTEXT_KEYS if key in event_dict}
    rest = {key: value for key, value in event_dict.items() if key not in head and key not in ids}
    return {**head, **ids, **rest}


def _redactor(handler: logging.Handler | None) -> RedactionFilter | None:
    if handler is None:
        return None
    for installed in handler.filters:
        if isinstance(installed, RedactionFilter):
            return installed
    return None


def _redacted(value: Any, redactor: RedactionFilter) -> Any:
    if isinstance(value, str):
        return redactor.redact(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {key: _redacted(item, redactor) for key, item in value.items()}
    return redactor.redact(str(value))  # rendered anyway (JSON default=str): redact what prints


def make_handler(log_format: LogFormat, *, stream: IO[str] | None = None, message_text: bool = False) -> logging.Handler:
    """A stream handler (stderr by default) with a ``LogFormatter``. Add it to a logger, then
    ``install_redaction`` puts the redaction filter on it that the formatter uses too."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    formatter = LogFormatter(log_format, message_text=message_text)
    formatter.handler = handler
    handler.setFormatter(formatter)
    return handler


def configure_logging(
    *, log_format: LogFormat | None = None, level: str | int = "INFO", stream: IO[str] | None = None
) -> logging.Handler:
    """The process's logging: the root logger gets one ``make_handler`` handler (replacing any),
    ``level``, and structlog is set up to render through the same formatter. Call
    ``install_redaction`` after it (as the CLI does), and ``set_message_text`` once the
    configuration is known."""
    chosen = log_format or default_format(stream)
    handler = make_handler(chosen, stream=stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    if root.getEffectiveLevel() > logging.DEBUG:
        # One line per HTTP call is noise in production; our own lines carry the ids. At DEBUG
        # an operator asked for everything.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    structlog.configure(
        processors=[*_stamp_chain(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return handler


def set_message_text(enabled: bool, *, logger: logging.Logger | None = None) -> None:
    """Apply ``log_message_text`` to every ``LogFormatter`` on ``logger``'s handlers (default:
    the root logger's): SDK payload dumps are shown only when it is on."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if isinstance(handler.formatter, LogFormatter):
            handler.formatter.message_text = enabled
