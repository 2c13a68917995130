"""The settings of a WhatsApp Cloud API channel (``type: whatsapp``; docs/WHATSAPP.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gateway.core.config import ChannelConfig, HttpUrl, SecretRef

__all__ = ["WhatsAppChannelConfig"]


class WhatsAppChannelConfig(ChannelConfig):
    """One WhatsApp business phone number on Meta's Cloud API. Meta calls
    ``/whatsapp/{channel}``: a GET handshake once, then signed POSTs."""

    type: Literal["whatsapp"]
    #: The business phone number's id (WhatsApp Manager → API setup), not the number itself.
    phone_number_id: str = Field(pattern=r"^[0-9]{1,32}$")
    #: A system user's access token with ``whatsapp_business_messaging``.
    access_token: SecretRef
    #: The Meta app's secret: every webhook POST is signed with it (``X-Hub-Signature-256``).
    app_secret: SecretRef
    #: What we typed in the app's webhook settings; Meta echoes it in the GET handshake.
    verify_token: SecretRef
    #: The Graph API and its version (a fake in tests).
    api_base_url: HttpUrl = "https://graph.facebook.com/v23.0"
    #: The approved template a bot-initiated message goes as outside the 24-hour window, its
    #: text as the template's one body parameter; unset: such a message is parked.
    template_name: str | None = Field(default=None, min_length=1, max_length=512)
    #: The template's language code as approved (``en``, ``en_US``, ``pt_BR``...).
    template_language: str = Field(default="en", min_length=2, max_length=15)
    #: Quote the user's message (``context.message_id``) in the answer: ``bursts`` (the last of
    #: several messages one answer covers), ``always``, or ``never``.
    quote_replies: Literal["bursts", "always", "never"] = "bursts"
    #: Mark each message read and show "typing…" while OCS works (``status: read`` with
    #: ``typing_indicator``); it also tells the user their message arrived.
    read_receipts: bool = True
    #: Send reply files as a ``link`` Meta fetches itself (OCS file URLs it can reach) instead
    #: of uploading them through ``/{phone_number_id}/media``.
    media_by_link: bool = False
    #: Hosts besides the Graph API's own where the access token may go when downloading a
    #: user's file (Meta serves media URLs from its CDN); any other host never sees it.
    media_hosts: tuple[str, ...] = ("lookaside.fbsbx.com",)
    #: Throughput of the number (Meta's default 80 messages/s, error 130429), for all replicas.
    messages_per_second: float = Field(default=80.0, gt=0, le=1000)
    #: Spacing between two messages to one user. Meta allows bursts but about one message
    #: every 6 s on average (error 131056); answers of a few parts go at this spacing.
    pair_interval_s: float = Field(default=1.0, gt=0)
    #: After a 131056 the user's next message waits this long (all replicas).
    pair_backoff_s: float = Field(default=6.0, gt=0)
    #: A text that starts the conversation over (a new OCS session), compared without case.
    reset_keyword: str = "/reset"

    @model_validator(mode="after")
    def _hosts_are_names(self) -> WhatsAppChannelConfig:
        for host in self.media_hosts:
            if not host or "/" in host or ":" in host:
                raise ValueError(f"media_hosts entries are host names, like lookaside.fbsbx.com (got {host!r})")
        return self
