"""Every configuration field is described where an operator looks for it: docs/CONFIG.md, or for
a channel type's own fields, that platform's guide (which CONFIG.md links). A field added without
a word of documentation fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from adapters.slack.config import SlackChannelConfig
from adapters.telegram.config import TelegramChannelConfig
from adapters.webhook.config import WebhookChannelConfig
from gateway.core import config

DOCS = Path(__file__).resolve().parent.parent / "docs"
WHERE: list[tuple[type[BaseModel], tuple[str, ...]]] = [
    (config.GatewayConfig, ("CONFIG.md",)),
    (config.BotConfig, ("CONFIG.md",)),
    (config.BudgetLimits, ("CONFIG.md",)),
    (config.WorkerTuning, ("CONFIG.md",)),
    (WebhookChannelConfig, ("CONFIG.md", "WEBHOOKS.md")),
    (TelegramChannelConfig, ("CONFIG.md", "TELEGRAM.md")),
    (SlackChannelConfig, ("CONFIG.md", "SLACK.md")),
]


@pytest.mark.parametrize(("model", "pages"), WHERE, ids=[model.__name__ for model, _ in WHERE])
def test_every_field_is_documented(model: type[BaseModel], pages: tuple[str, ...]) -> None:
    text = "\n".join((DOCS / page).read_text(encoding="utf-8") for page in pages)
    # A table cell (`field`) or a YAML example (field: value) names it.
    missing = [name for name in model.model_fields if f"`{name}`" not in text and f"{name}:" not in text]
    assert missing == [], f"{model.__name__} fields not described in {', '.join(pages)}: {missing}"
