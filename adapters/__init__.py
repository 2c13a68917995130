"""Channel adapters, one package per platform behind ``gateway.core.channel.ChannelAdapter``.

Platform SDKs are imported only when a channel of that kind is configured, so a deployment
with webhook channels alone never loads python-telegram-bot or slack-bolt.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from gateway.core.channel import (
    AdapterServices,
    ChannelAdapter,
    InboundFile,
    InboundRequest,
)

__all__ = ["ADAPTER_PATHS", "AdapterServices", "ChannelAdapter", "InboundFile", "InboundRequest", "adapter_class"]

#: Channel ``type`` → ``module:Class``.
ADAPTER_PATHS: dict[str, str] = {
    "webhook": "adapters.webhook:WebhookAdapter",
    "telegram": "adapters.telegram:TelegramAdapter",
    "slack": "adapters.slack:SlackAdapter",
}


def adapter_class(kind: str) -> type[ChannelAdapter[Any]]:
    """The adapter class for a channel type (imports its package on first use)."""
    module_name, _, class_name = ADAPTER_PATHS[kind].partition(":")
    cls: type[ChannelAdapter[Any]] = getattr(import_module(module_name), class_name)
    return cls
