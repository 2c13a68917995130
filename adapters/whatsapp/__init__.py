"""The WhatsApp channel: Meta's Cloud API (Graph API over httpx, no SDK) behind
``gateway.core.channel.ChannelAdapter``.

Modules, one concept each: ``config`` (the channel's settings), ``keys`` (its Redis keys),
``signing`` (the GET handshake and ``X-Hub-Signature-256``), ``inbound`` (webhook payload →
Inbound values and delivery statuses), ``format`` (Markdown → WhatsApp's own formatting, split at
4,096 characters), ``graph`` (one Graph API call, its errors translated), ``window`` (the 24-hour
customer-service window), ``receipts`` (statuses on the delivery record), ``media`` (downloads
through the SSRF guard, uploads), ``outbound`` (message bodies and pacing) and ``adapter``. The
package itself imports none of them, so reading the configuration loads nothing else.
"""
