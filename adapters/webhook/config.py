"""The settings of a webhook channel (``type: webhook``; docs/WEBHOOKS.md)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import model_validator

from gateway.core.config import ChannelConfig, HttpUrl, SecretRef

__all__ = ["WebhookChannelConfig"]


class WebhookChannelConfig(ChannelConfig):
    """A generic webhook channel: Standard Webhooks in, signed callbacks out."""

    type: Literal["webhook"]
    #: The Standard Webhooks secret (``whsec_`` + base64) for both directions.
    secret: SecretRef
    callback_url: HttpUrl
    #: Hosts the callback may go to; defaults to the callback URL's own host.
    callback_allowlist: tuple[str, ...] = ()
    #: Opt-in: a signed ``progress`` callback for each new progress line OCS reports while it
    #: works (docs/WEBHOOKS.md, "Progress").
    show_progress: bool = False

    @model_validator(mode="after")
    def _callback_allowed(self) -> WebhookChannelConfig:
        host = urlsplit(self.callback_url).hostname or ""
        allow = self.callback_allowlist or (host,)
        if host not in allow:
            raise ValueError(f"callback_url host {host!r} is not in callback_allowlist {list(allow)}")
        object.__setattr__(self, "callback_allowlist", tuple(allow))
        return self
