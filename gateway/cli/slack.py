"""``ocs-gateway slack manifest``: the Slack app manifest for a channel, or for the quickstart's
Socket Mode channel when nothing is configured."""

from __future__ import annotations

import argparse

from gateway.cli.settings import configured
from gateway.config_loading import GatewayConfig, load_config

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    slack = commands.add_parser("slack", help="manifest: print the Slack app manifest for a channel")
    slack.add_argument("action", choices=["manifest"])
    slack.add_argument("--channel", required=True)
    slack.add_argument(
        "--socket-mode", action="store_true", default=None,
        help="a Socket Mode app (no request URLs) even if the channel does not say socket_mode: true",
    )
    slack.set_defaults(func=_slack)


def _slack(args: argparse.Namespace) -> int:
    from adapters.slack.manifest import manifest

    if load_config(args.config) is None:
        # No gateway.yaml: the quickstart's Socket Mode channel, whose tokens exist only once
        # the app made from this manifest does.
        from gateway.cli.demo import DEMO_SLACK_CHANNEL, demo_slack_channel
        from gateway.core.config import Secret
        from gateway.ocs.simulator import DEMO_CHATBOT_ID

        placeholders = {"app_token": Secret("xapp-placeholder"), "bot_token": Secret("xoxb-placeholder")}
        config = GatewayConfig.from_mapping({
            "bots": {"simulator": {"chatbot_id": DEMO_CHATBOT_ID, "auth": "keyless"}},
            "channels": {DEMO_SLACK_CHANNEL: {**demo_slack_channel(), **placeholders}},
        })  # fmt: skip
    else:
        config = configured(args)
    print(manifest(config, args.channel, socket_mode=args.socket_mode))
    return 0
