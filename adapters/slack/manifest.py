"""The Slack app manifest for one channel (`ocs-gateway slack manifest --channel X` prints it).

Paste the output at https://api.slack.com/apps → *Create New App* → *From a manifest*. It sets the
scopes the adapter uses, the bot events it answers, the request URL and the OAuth redirect URL, so
a newcomer never hunts through Slack's settings pages (docs/SLACK.md).
"""

from __future__ import annotations

from typing import Any

import yaml

from adapters.slack.config import SlackChannelConfig
from gateway.core.config import GatewayConfig
from gateway.core.errors import ConfigError

__all__ = ["ASSISTANT_EVENTS", "ASSISTANT_SCOPES", "BOT_EVENTS", "BOT_SCOPES", "bot_events", "bot_scopes", "manifest"]

#: What each scope is for: reading what the bot answers, and writing its replies.
BOT_SCOPES: tuple[str, ...] = (
    "app_mentions:read",  # app_mention events
    "channels:history",  # thread replies in public channels (message.channels)
    "groups:history",  # ... in private channels (message.groups)
    "im:history",  # direct messages (message.im)
    "mpim:history",  # group DMs (message.mpim)
    "chat:write",  # chat.postMessage, and the thread status while OCS works (assistant.threads.setStatus)
    "reactions:write",  # the "working" reaction where there is no thread status
    "files:read",  # the user's files (url_private_download)
    "files:write",  # reply attachments (files.getUploadURLExternal)
)
#: Events the adapter handles; app_uninstalled and tokens_revoked need no scope (docs/PLATFORMS.md §2.7).
BOT_EVENTS: tuple[str, ...] = (
    "app_mention",
    "message.im",
    "message.channels",
    "message.groups",
    "message.mpim",
    "app_uninstalled",
    "tokens_revoked",
)
#: With ``assistant: {enabled: true}``: suggested prompts and titles of assistant threads.
ASSISTANT_SCOPES: tuple[str, ...] = ("assistant:write",)
#: ... and the events of assistant threads (their messages are ``message.im``); neither needs a scope.
ASSISTANT_EVENTS: tuple[str, ...] = ("assistant_thread_started", "assistant_thread_context_changed")
_PLACEHOLDER_URL = "https://YOUR-GATEWAY.example.com"


def bot_scopes(config: SlackChannelConfig) -> tuple[str, ...]:
    """The scopes to request: ``commands`` too when a slash command is configured, and
    ``assistant:write`` when the assistant is on."""
    scopes = (*BOT_SCOPES, *ASSISTANT_SCOPES) if config.assistant.enabled else BOT_SCOPES
    return (*scopes, "commands") if config.slash_command else scopes


def bot_events(config: SlackChannelConfig) -> tuple[str, ...]:
    """The bot events to subscribe to: the assistant's too when it is on."""
    return (*BOT_EVENTS, *ASSISTANT_EVENTS) if config.assistant.enabled else BOT_EVENTS


def manifest(config: GatewayConfig, channel: str, *, socket_mode: bool | None = None) -> str:
    """The app manifest (YAML) for the Slack channel ``channel`` of ``config``; a Socket Mode app
    (no request URLs, ``socket_mode_enabled``) when ``socket_mode`` is True, or None and the
    channel has ``socket_mode: true``.

    Raises:
        ConfigError: no such channel, or it is not a Slack channel.
    """
    slack = config.channels.get(channel)
    if not isinstance(slack, SlackChannelConfig):
        raise ConfigError(f"channel {channel!r} is not a slack channel in the configuration")
    base = config.public_url or _PLACEHOLDER_URL
    events_url = f"{base}/slack/{channel}/events"
    socket = slack.socket_mode if socket_mode is None else socket_mode
    features: dict[str, Any] = {
        "app_home": {"messages_tab_enabled": True, "messages_tab_read_only_enabled": False},
        "bot_user": {"display_name": channel[:80], "always_online": True},
    }
    if slack.assistant.enabled:
        # The assistant view (Slack's AI-app surface); assistant:write needs it declared.
        view: dict[str, Any] = {"assistant_description": slack.assistant.description}
        if slack.assistant.suggested_prompts:
            view["suggested_prompts"] = [{"title": p.title, "message": p.message} for p in slack.assistant.suggested_prompts]
        features["assistant_view"] = view
    if slack.slash_command:
        features["slash_commands"] = [
            {
                "command": slack.slash_command,
                "description": "Start the conversation over",
                "should_escape": False,
                # Over Socket Mode the command arrives on the socket: no URL.
                **({} if socket else {"url": events_url}),
            }
        ]
    oauth: dict[str, Any] = {"scopes": {"bot": list(bot_scopes(slack))}}
    if slack.user_scopes:
        oauth["scopes"]["user"] = list(slack.user_scopes)
    if slack.client_id is not None:
        oauth["redirect_urls"] = [f"{base}/slack/{channel}/oauth_redirect"]
    # Over Socket Mode the events arrive on the socket: no request URL.
    subscriptions: dict[str, Any] = {} if socket else {"request_url": events_url}
    subscriptions["bot_events"] = list(bot_events(slack))
    document = {
        "display_information": {
            "name": f"OCS {channel}"[:35],
            "description": "An Open Chat Studio chatbot, through ocs-gateway",
        },
        "features": features,
        "oauth_config": oauth,
        "settings": {
            "event_subscriptions": subscriptions,
            "org_deploy_enabled": False,
            "socket_mode_enabled": socket,
            # Rotating tokens expire after 12 h; the gateway refreshes them (adapters/slack/tokens.py).
            "token_rotation_enabled": slack.token_rotation,
        },
    }
    header = f"# Slack app manifest for channel {channel!r}: paste it at https://api.slack.com/apps (From a manifest).\n"
    if socket:
        header += "# Socket Mode: then create an app-level token with connections:write (Basic Information) for app_token.\n"
    if config.public_url is None and (not socket or slack.client_id is not None):
        header += f"# public_url is not set in the config: replace {_PLACEHOLDER_URL} with your gateway's URL.\n"
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
