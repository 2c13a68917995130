"""``ocs-gateway check-config``: load the configuration and report what it holds or what is wrong."""

from __future__ import annotations

import argparse

from gateway.cli.settings import configured

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    commands.add_parser("check-config", help="load the config and report problems").set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    config = configured(args)
    print(f"ok: {len(config.bots)} bot(s), {len(config.channels)} channel(s)")
    for name, channel in config.channels.items():
        print(f"  {name}: {channel.type} → bot {channel.bot}")
    return 0
