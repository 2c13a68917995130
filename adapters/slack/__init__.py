"""The Slack channel: Events API in, Web API out, on slack_sdk (docs/SLACK.md).

The adapter is ``adapter.SlackAdapter``, the channel's settings ``config``, its Redis keys
``keys`` and the app manifest ``manifest``. The package itself imports none of them, so
reading the configuration (``config``) does not load the SDK.
"""
