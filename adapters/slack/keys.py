"""The Slack channel's own Redis keys, under ``{namespace}:slack:`` (``Keys.for_adapter``):

=====================================================  ======  ================================
key                                                    type    meaning
=====================================================  ======  ================================
``slack:install:{channel}:{team}``                     hash    a Slack installation (Bolt's Bot
                                                               and Installation as JSON:
                                                               ``bot``, ``installation``,
                                                               ``user:{id}``); the enterprise id
                                                               instead of the team for org-wide
                                                               installs
``slack:state:{state}``                                string  a pending Slack OAuth ``state``;
                                                               TTL 10 min
``slack:rotating:{channel}:{team}``                    string  the process refreshing a rotating
                                                               token (owner token); PX TTL
``slack:thread:{channel}:{team}:{chan}:{thread_ts}``   string  a Slack thread the bot is part of
                                                               (plain replies there reach it);
                                                               TTL 30 days
``slack:pace:{channel}:{team}:{chan}``                 string  next free chat.postMessage slot
                                                               in a Slack channel
                                                               (``gateway.store.pacing``); PX TTL
=====================================================  ======  ================================
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.keys import AdapterKeys, Keys

__all__ = ["PREFIX", "SlackKeys"]

#: Deployed data lives under it: never change it.
PREFIX = "slack"


@dataclass(frozen=True, slots=True)
class SlackKeys:
    """Builds the Slack channel's keys."""

    keys: AdapterKeys

    @classmethod
    def of(cls, keys: Keys) -> SlackKeys:
        return cls(keys.for_adapter(PREFIX))

    def installation(self, channel: str, team: str) -> str:
        return self.keys.key("install", channel, team)

    def oauth_state(self, state: str) -> str:
        return self.keys.key("state", state)

    def rotation_lock(self, channel: str, workspace: str) -> str:
        """String: the process refreshing this installation's rotating token (SET NX PX)."""
        return self.keys.key("rotating", channel, workspace)

    def thread(self, channel: str, team: str, slack_channel: str, thread_ts: str) -> str:
        return self.keys.key("thread", channel, team, slack_channel, thread_ts)

    def pace(self, channel: str, team: str, slack_channel: str) -> str:
        return self.keys.key("pace", channel, team, slack_channel)
