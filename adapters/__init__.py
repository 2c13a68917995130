"""Channel adapters, one package per platform behind ``gateway.core.channel.ChannelAdapter``.

The registry of channel types: each type's adapter class and the model of its settings.
Platform SDKs are imported only when a channel of that kind is configured, so a deployment
with webhook channels alone never loads python-telegram-bot or slack-bolt: the config models
(``adapters/<platform>/config.py``) import no SDK, and an adapter's package imports its adapter
only when ``adapter_class`` asks for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from types import MappingProxyType
from typing import Any

from adapters.slack.config import SlackChannelConfig
from adapters.telegram.config import TelegramChannelConfig
from adapters.webhook.config import WebhookChannelConfig
from adapters.whatsapp.config import WhatsAppChannelConfig
from gateway.core.channel import (
    AdapterServices,
    ChannelAdapter,
    InboundFile,
    InboundRequest,
)
from gateway.core.config import ChannelConfig

__all__ = [
    "ADAPTER_PATHS",
    "CHANNEL_MODELS",
    "AdapterServices",
    "ChannelAdapter",
    "InboundFile",
    "InboundRequest",
    "adapter_class",
]

#: Channel ``type`` → ``module:Class`` of its adapter.
ADAPTER_PATHS: dict[str, str] = {
    "webhook": "adapters.webhook.adapter:WebhookAdapter",
    "telegram": "adapters.telegram.adapter:TelegramAdapter",
    "slack": "adapters.slack.adapter:SlackAdapter",
    "whatsapp": "adapters.whatsapp.adapter:WhatsAppAdapter",
}
#: Channel ``type`` → the model of its settings (the config loader validates ``channels:`` by it).
CHANNEL_MODELS: Mapping[str, type[ChannelConfig]] = MappingProxyType({
    "webhook": WebhookChannelConfig,
    "telegram": TelegramChannelConfig,
    "slack": SlackChannelConfig,
    "whatsapp": WhatsAppChannelConfig,
})


def adapter_class(kind: str) -> type[ChannelAdapter[Any]]:
    """The adapter class for a channel type (imports its package on first use)."""
    module_name, _, class_name = ADAPTER_PATHS[kind].partition(":")
    cls: type[ChannelAdapter[Any]] = getattr(import_module(module_name), class_name)
    return cls
