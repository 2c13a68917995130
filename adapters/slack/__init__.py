"""The Slack channel: Events API in, Web API out, on slack_sdk (docs/SLACK.md)."""

from __future__ import annotations

from adapters.slack.adapter import SlackAdapter
from adapters.slack.manifest import manifest

__all__ = ["SlackAdapter", "manifest"]
