"""The generic webhook channel (Standard Webhooks in and out)."""

from adapters.webhook.adapter import WebhookAdapter, WebhookMessage

__all__ = ["WebhookAdapter", "WebhookMessage"]
