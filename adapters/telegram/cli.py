"""``ocs-gateway telegram set-webhook | delete-webhook | webhook-info``: point a bot at the
gateway (webhook mode) or clear the way for long polling (polling mode), and check it.

Plain Bot API calls over the gateway's httpx client (no PTB ``Bot`` needed for two calls). The
URL of every call holds the bot token, so no error message here ever includes a URL.

``webhook_info`` warns about drift, the usual reasons a bot goes quiet: the webhook points
somewhere else (a redeploy under a new host), Telegram sends a different set of update types,
updates are piling up (Telegram holds a chat's queue while our answers fail, docs/PLATFORMS.md §1.3), or
Telegram recorded a delivery error.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import httpx

from adapters.telegram.config import TelegramChannelConfig
from gateway.core.config import GatewayConfig
from gateway.core.errors import ConfigError

__all__ = ["PENDING_WARNING", "delete_webhook", "expected_webhook_url", "set_webhook", "webhook_info"]

#: More waiting updates than this deserves a warning: deliveries are failing or slow.
PENDING_WARNING = 50
#: setWebhook's secret_token: 1-256 of A-Z a-z 0-9 _ - (docs/PLATFORMS.md §1.3).
_SECRET_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
#: What Telegram sends when allowed_updates was never set (docs/PLATFORMS.md §1.3: "all except ...").
_DEFAULT_UPDATES = "Telegram's default (every type except chat_member and reactions)"
_INBOUND_PATH = "/telegram/{channel}"  # TelegramAdapter.inbound_path, without importing PTB


def expected_webhook_url(config: GatewayConfig, channel: str) -> str:
    """``public_url`` + the channel's inbound path.

    Raises:
        ConfigError: ``public_url`` is not set.
    """
    if not config.public_url:
        raise ConfigError("public_url is not set in the gateway config: Telegram needs the HTTPS address it can reach")
    return config.public_url + _INBOUND_PATH.format(channel=channel)


async def set_webhook(
    config: GatewayConfig, channel: str, *, http: httpx.AsyncClient, drop_pending_updates: bool = False
) -> str:
    """Register ``public_url/telegram/<channel>`` with the channel's secret and update types.

    Returns the webhook report (see ``webhook_info``) to print.

    Raises:
        ConfigError: the channel is not Telegram, public_url is unset, the secret has characters
            Telegram refuses, the Bot API is unreachable or refuses the call.
    """
    settings = _channel(config, channel)
    if settings.mode == "polling" or settings.webhook_secret is None:
        raise ConfigError(
            f"channel {channel!r} uses long polling (mode: polling), which Telegram refuses while a webhook "
            f"is set; to receive by webhook set mode: webhook and a webhook_secret"
        )
    url = expected_webhook_url(config, channel)
    secret = settings.webhook_secret.reveal()
    if not _SECRET_TOKEN.match(secret):
        raise ConfigError(
            f"channels.{channel}.webhook_secret must be 1-256 characters of A-Z a-z 0-9 _ - "
            "(Telegram's rule): generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    params = {
        "url": url,
        "secret_token": secret,
        "allowed_updates": list(settings.allowed_updates),
        "drop_pending_updates": drop_pending_updates,
    }
    await _call(http, settings, channel, "setWebhook", params)
    report = await webhook_info(config, channel, http=http)
    return f"Webhook set for channel {channel!r}: {url}\n{report}"


async def delete_webhook(
    config: GatewayConfig, channel: str, *, http: httpx.AsyncClient, drop_pending_updates: bool = False
) -> str:
    """Remove the bot's webhook so that long polling may start (Telegram refuses getUpdates
    while one is set, docs/PLATFORMS.md §1.3). Pending updates are kept unless ``drop_pending_updates``.

    Returns the webhook report to print.

    Raises:
        ConfigError: the channel is not Telegram, or the Bot API is unreachable or refuses.
    """
    settings = _channel(config, channel)
    await _call(http, settings, channel, "deleteWebhook", {"drop_pending_updates": drop_pending_updates})
    report = await webhook_info(config, channel, http=http)
    dropped = " (pending updates dropped)" if drop_pending_updates else ""
    return f"Webhook deleted for channel {channel!r}{dropped}.\n{report}"


async def webhook_info(config: GatewayConfig, channel: str, *, http: httpx.AsyncClient) -> str:
    """A printable report of the bot and its webhook, ending with any drift warnings.

    Raises:
        ConfigError: the channel is not Telegram, or the Bot API is unreachable or refuses.
    """
    settings = _channel(config, channel)
    me = await _call(http, settings, channel, "getMe", {})
    info = await _call(http, settings, channel, "getWebhookInfo", {})
    subscribed = info.get("allowed_updates")
    lines = [
        f"Telegram channel {channel!r}: bot @{me.get('username', '?')} (id {me.get('id', '?')})",
        f"  webhook url:      {info.get('url') or '(none)'}",
        f"  allowed updates:  {', '.join(subscribed) if subscribed is not None else _DEFAULT_UPDATES}",
        f"  pending updates:  {info.get('pending_update_count', 0)}",
        f"  max connections:  {info.get('max_connections', '-')}",
    ]
    if info.get("ip_address"):
        lines.append(f"  ip address:       {info['ip_address']}")
    if info.get("last_error_message"):
        lines.append(f"  last error:       {_when(info.get('last_error_date'))} {info['last_error_message']}")
    warnings = _drift(config, channel, settings, info)
    if warnings:
        lines.append("Warnings:")
        lines.extend(f"  ! {warning}" for warning in warnings)
    else:
        lines.append("OK: the webhook matches the configuration.")
    return "\n".join(lines)


def _drift(config: GatewayConfig, channel: str, settings: TelegramChannelConfig, info: dict[str, Any]) -> list[str]:
    fix = f"run `ocs-gateway telegram set-webhook --channel {channel}`"
    warnings: list[str] = []
    url = info.get("url") or ""
    if settings.mode == "polling":
        if url:
            warnings.append(
                f"a webhook is set ({url}), so Telegram refuses the gateway's getUpdates: "
                f"run `ocs-gateway telegram delete-webhook --channel {channel}`"
            )
        return warnings
    if not config.public_url:
        warnings.append("public_url is not set in the config, so the webhook URL cannot be checked")
    elif not url:
        warnings.append(f"no webhook is set, so Telegram delivers nothing: {fix}")
    elif url != expected_webhook_url(config, channel):
        warnings.append(f"the webhook points to {url}, not {expected_webhook_url(config, channel)}: {fix}")
    subscribed = info.get("allowed_updates")
    if url and (subscribed is None or set(subscribed) != set(settings.allowed_updates)):
        current = ", ".join(subscribed) if subscribed is not None else _DEFAULT_UPDATES
        wanted = ", ".join(settings.allowed_updates)
        warnings.append(f"Telegram sends [{current}] but the config asks for [{wanted}]: {fix}")
    pending = int(info.get("pending_update_count") or 0)
    if pending > PENDING_WARNING:
        warnings.append(
            f"{pending} updates are waiting: Telegram cannot deliver them (see last error) or the gateway is down"
        )
    if info.get("last_error_message"):
        warnings.append(
            f"Telegram's last delivery failed {_when(info.get('last_error_date'))}: {info['last_error_message']}"
        )
    return warnings


def _when(timestamp: Any) -> str:
    if not isinstance(timestamp, int):
        return "(time unknown)"
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _channel(config: GatewayConfig, channel: str) -> TelegramChannelConfig:
    settings = config.channels.get(channel)
    if not isinstance(settings, TelegramChannelConfig):
        known = ", ".join(n for n, c in config.channels.items() if isinstance(c, TelegramChannelConfig)) or "none"
        raise ConfigError(f"{channel!r} is not a Telegram channel in the config (Telegram channels: {known})")
    return settings


async def _call(
    http: httpx.AsyncClient, settings: TelegramChannelConfig, channel: str, method: str, params: dict[str, Any]
) -> Any:
    """One Bot API call; the result, or ConfigError with Telegram's own description."""
    url = f"{settings.api_base_url}/bot{settings.token.reveal()}/{method}"
    try:
        response = await http.post(url, json=params)
        body = response.json()
    except httpx.HTTPError as exc:
        # str(exc) can carry the URL, and with it the token: name the failure only.
        raise ConfigError(f"cannot reach the Bot API at {settings.api_base_url} ({type(exc).__name__})") from None
    except ValueError:
        status = response.status_code
        raise ConfigError(f"the Bot API at {settings.api_base_url} did not answer JSON (HTTP {status})") from None
    if not isinstance(body, dict) or not body.get("ok"):
        description = body.get("description", "no description") if isinstance(body, dict) else "malformed answer"
        if response.status_code in (401, 404):
            raise ConfigError(
                f"Telegram refused the token of channel {channel!r} ({description}): "
                "check the environment variable behind its token"
            )
        raise ConfigError(f"Telegram refused {method} for channel {channel!r}: {description}")
    return body.get("result")
