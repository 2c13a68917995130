"""Every configuration field is described where an operator looks for it: docs/CONFIG.md, or for
a channel type's own fields, that platform's guide (which CONFIG.md links). A field added without
a word of documentation fails here, and so does a CONFIG.md row for a field that does not exist.

Names are matched whole: CONFIG.md's tables are parsed, section by section, into the field names
their first column lists, and a guide names a field as a YAML key or an inline code span of its
own (`` `mode` ``, `` `mode: polling` ``), so ``webhook_secret:`` never documents ``secret``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from adapters.slack.config import SlackChannelConfig
from adapters.telegram.config import TelegramChannelConfig
from adapters.webhook.config import WebhookChannelConfig
from adapters.whatsapp.config import WhatsAppChannelConfig
from gateway.core import config

DOCS = Path(__file__).resolve().parent.parent / "docs"
WHERE: list[tuple[type[BaseModel], tuple[str, ...]]] = [
    (config.GatewayConfig, ("CONFIG.md",)),
    (config.BotConfig, ("CONFIG.md",)),
    (config.BudgetLimits, ("CONFIG.md",)),
    (config.SpeechConfig, ("CONFIG.md",)),
    (config.WorkerTuning, ("CONFIG.md",)),
    (config.CoalesceConfig, ("CONFIG.md",)),
    (config.RedisTls, ("CONFIG.md",)),
    (config.RedisSentinelConfig, ("CONFIG.md",)),
    (WebhookChannelConfig, ("CONFIG.md", "WEBHOOKS.md")),
    (TelegramChannelConfig, ("CONFIG.md", "TELEGRAM.md")),
    (SlackChannelConfig, ("CONFIG.md", "SLACK.md")),
    (WhatsAppChannelConfig, ("CONFIG.md", "WHATSAPP.md")),
]
#: The CONFIG.md heading whose table lists a model's fields, all of them and nothing else.
SECTIONS: dict[type[BaseModel], str] = {
    config.GatewayConfig: "Top level",
    config.BotConfig: "`bots.<name>`",
    config.BudgetLimits: "`bots.<name>.budget`",
    config.SpeechConfig: "`bots.<name>.speech`",
    config.WorkerTuning: "`worker`",
    config.CoalesceConfig: "`channels.<name>.coalesce`",
    config.RedisTls: "`redis_tls`",
    config.RedisSentinelConfig: "`redis_sentinel`",
}
#: Its table lists the fields every channel type has; each type's own fields are in its guide.
CHANNELS_SECTION = "`channels.<name>` (all types)"
CHANNEL_MODELS = [model for model, _ in WHERE if model not in SECTIONS]

_HEADING = re.compile(r"^#+\s+(.*?)\s*$")
_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
_YAML_KEY = re.compile(r"^\s*([A-Za-z_]\w*):", re.MULTILINE)
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
# An inline code span that names a field: the name alone, or the name and a value.
_SPAN_NAME = re.compile(r"([A-Za-z_]\w*)(?:: .*)?")


def section(page: str, heading: str) -> list[str]:
    """The lines under ``heading`` in ``page``, up to the next heading."""
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if (m := _HEADING.match(line)) and m.group(1) == heading]
    assert len(starts) == 1, f"{page}: expected one heading {heading!r}, found {len(starts)}"
    end = next((i for i in range(starts[0] + 1, len(lines)) if _HEADING.match(lines[i])), len(lines))
    return lines[starts[0] + 1:end]


def section_table_fields(page: str, heading: str) -> set[str]:
    """The names in the first column of the table under ``heading``."""
    names: set[str] = set()
    rows = 0
    for line in section(page, heading):
        if not line.startswith("|"):
            continue
        first = line.strip("|").split("|")[0].strip()
        if first == "field" or set(first) <= {"-", ":"}:
            continue  # the header and its separator
        cell = _CODE_SPAN.findall(first)
        assert cell and all(name.isidentifier() for name in cell), f"{page} {heading}: a row that names no field: {line}"
        names.update(cell)
        rows += 1
    assert rows, f"{page}: no field table under {heading!r}"
    return names


def named_in(text: str) -> set[str]:
    """Every name ``text`` gives as a key of a YAML example or as an inline code span of its own."""
    names = {key for block in _FENCE.findall(text) for key in _YAML_KEY.findall(block)}
    for span in _CODE_SPAN.findall(_FENCE.sub("", text)):
        if m := _SPAN_NAME.fullmatch(span):
            names.add(m.group(1))
    return names


def common_channel_fields() -> set[str]:
    common = set(CHANNEL_MODELS[0].model_fields)
    for model in CHANNEL_MODELS[1:]:
        common &= set(model.model_fields)
    return common


@pytest.mark.parametrize("model", list(SECTIONS), ids=[model.__name__ for model in SECTIONS])
def test_each_config_md_table_lists_exactly_its_fields(model: type[BaseModel]) -> None:
    documented = section_table_fields("CONFIG.md", SECTIONS[model])
    fields = set(model.model_fields)
    assert (sorted(fields - documented), sorted(documented - fields)) == ([], []), (
        f"CONFIG.md {SECTIONS[model]}: (fields not described, rows for no field) of {model.__name__}"
    )


def test_the_channels_table_lists_exactly_what_every_channel_type_has() -> None:
    documented = section_table_fields("CONFIG.md", CHANNELS_SECTION)
    common = common_channel_fields()
    assert (sorted(common - documented), sorted(documented - common)) == ([], [])


@pytest.mark.parametrize(("model", "pages"), [(m, p) for m, p in WHERE if m in CHANNEL_MODELS],
                         ids=[model.__name__ for model in CHANNEL_MODELS])
def test_each_channel_types_own_fields_are_named_in_its_guide(model: type[BaseModel], pages: tuple[str, ...]) -> None:
    # The guide, or the prose under CONFIG.md's channels table (what several types share).
    guides = [page for page in pages if page != "CONFIG.md"]
    named = named_in("\n".join(section("CONFIG.md", CHANNELS_SECTION)))
    for page in guides:
        named |= named_in((DOCS / page).read_text(encoding="utf-8"))
    missing = sorted(set(model.model_fields) - common_channel_fields() - named)
    assert missing == [], f"{model.__name__} fields not named in {', '.join(guides)} or CONFIG.md: {missing}"


def test_a_longer_name_does_not_document_a_shorter_one() -> None:
    # The substring match this replaced found `secret` in `webhook_secret: ...` and `token` in `bot_token`.
    guide = (
        "```yaml\n    webhook_secret: ${S}\n    bot_token: x\n```\n"
        "Set `socket_mode: true` and see `poll_timeout_s`, `tg:poll:{id}:lease`, `max_in_flight_total`.\n"
    )
    assert named_in(guide) == {"webhook_secret", "bot_token", "socket_mode", "poll_timeout_s", "max_in_flight_total"}
