"""The Telegram channel: python-telegram-bot behind ``gateway.core.channel.ChannelAdapter``.

Modules, one concept each: ``config`` (the channel's settings), ``keys`` (its Redis keys),
``inbound`` (secret check, update → Inbound, conversation keys), ``addressing`` (commands,
mentions, replies: group gating), ``content`` (media → text and files), ``markup``/``format``
(Markdown → Telegram HTML chunks), ``outbound`` (send, pacing, PTB → gateway errors), ``files``
(getFile downloads), ``cli`` (set-webhook / webhook-info) and ``adapter`` (the class tying them
together). The package itself imports none of them, so reading the configuration
(``config``) does not load the SDK.
"""
