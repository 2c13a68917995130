"""The generic webhook channel (Standard Webhooks in and out): the adapter is
``adapter.WebhookAdapter``, the channel's settings ``config``, the signing ``signing``."""
