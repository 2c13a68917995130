"""The settings of a Slack channel (``type: slack``; docs/SLACK.md). No SDK here: the
configuration loads without slack_sdk or Bolt."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.core.config import ChannelConfig, EnvStr, HttpUrl, SecretRef

__all__ = ["SlackAssistantConfig", "SlackChannelConfig", "SlackSuggestedPrompt"]


class SlackSuggestedPrompt(BaseModel):
    """One suggested prompt of an assistant thread: the button's ``title`` and the ``message``
    it sends (``assistant.threads.setSuggestedPrompts``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = Field(min_length=1, max_length=200)
    message: str = Field(min_length=1, max_length=4000)


class SlackAssistantConfig(BaseModel):
    """Slack's AI-app surface, assistant threads (docs/SLACK.md, "Assistant threads")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Declare the assistant view in the manifest and treat each assistant thread as a conversation.
    enabled: bool = False
    #: What the assistant view says about the bot (the manifest's ``assistant_description``).
    description: str = Field(default="An Open Chat Studio chatbot", min_length=1, max_length=300)
    #: Offered when a user opens a new assistant thread; Slack shows at most four.
    suggested_prompts: tuple[SlackSuggestedPrompt, ...] = Field(default=(), max_length=4)
    #: The heading above them (Slack's default when unset).
    prompts_title: str | None = None
    #: The thread's title (its name in the app's history) becomes the user's first message.
    title_from_first_message: bool = True


class SlackChannelConfig(ChannelConfig):
    """One Slack app: single workspace (bot_token) or multi-workspace OAuth (client id/secret)."""

    type: Literal["slack"]
    #: Checks the Events API's HTTP requests; not used in Socket Mode, where the app-level
    #: token authenticates the connection and nothing arrives over HTTP.
    signing_secret: SecretRef | None = None
    bot_token: SecretRef | None = None
    client_id: EnvStr | None = None
    client_secret: SecretRef | None = None
    #: Conversations in channels: one per thread (default) or one per channel.
    channel_conversation: Literal["per_thread", "per_channel"] = "per_thread"
    reset_keyword: str = "reset"
    slash_command: str | None = None
    ignore_other_bots: bool = True
    #: OAuth: user scopes to request beside the bot scopes (user tokens are stored, not used yet).
    user_scopes: tuple[str, ...] = ()
    #: OAuth: the app has token rotation on; bot tokens expire (12 h) and are refreshed before.
    token_rotation: bool = False
    #: Refresh a rotating token this long before it expires (Bolt's default: 120 minutes).
    token_rotation_expiration_minutes: int = Field(default=120, ge=1, le=600)
    api_base_url: HttpUrl = "https://slack.com/api"
    #: Receive events over Slack's WebSocket (Socket Mode) instead of HTTP: no public URL needed.
    socket_mode: bool = False
    #: The app-level token (``xapp-...``, scope ``connections:write``) that opens the socket.
    app_token: SecretRef | None = None
    #: OCS's progress lines as the thread's status (docs/SLACK.md, "Progress"); off, the ⏳
    #: reaction only, as before.
    show_progress: bool = True
    assistant: SlackAssistantConfig = SlackAssistantConfig()

    @model_validator(mode="after")
    def _token_or_oauth(self) -> SlackChannelConfig:
        if self.bot_token is None and (self.client_id is None or self.client_secret is None):
            raise ValueError("slack needs bot_token (one workspace) or client_id + client_secret (OAuth)")
        return self

    @model_validator(mode="after")
    def _rotation_needs_oauth(self) -> SlackChannelConfig:
        if self.token_rotation and (self.client_id is None or self.client_secret is None):
            # Rotating tokens are refreshed with the app's client credentials, and only OAuth
            # installs store the refresh token.
            raise ValueError("slack token_rotation needs client_id + client_secret (OAuth installs)")
        return self

    @model_validator(mode="after")
    def _inbound_credentials(self) -> SlackChannelConfig:
        if self.socket_mode and self.app_token is None:
            raise ValueError("slack socket_mode needs app_token (an app-level xapp- token)")
        if not self.socket_mode and self.signing_secret is None:
            raise ValueError("slack needs signing_secret (or socket_mode: true with app_token)")
        return self
