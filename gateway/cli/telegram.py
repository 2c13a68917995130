"""``ocs-gateway telegram set-webhook | delete-webhook | webhook-info``: a Telegram channel's
webhook as Telegram holds it (the calls live in ``adapters/telegram/cli.py``)."""

from __future__ import annotations

import argparse
import asyncio
import functools
from collections.abc import Awaitable, Callable

import httpx

from gateway.cli.settings import configured
from gateway.config_loading import GatewayConfig

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    telegram = commands.add_parser("telegram", help="set-webhook | delete-webhook | webhook-info for a Telegram channel")
    telegram.add_argument("action", choices=["set-webhook", "delete-webhook", "webhook-info"])
    telegram.add_argument("--channel", required=True)
    telegram.add_argument(
        "--drop-pending-updates", action="store_true",
        help="set-webhook/delete-webhook: discard the updates Telegram holds for the bot",
    )
    telegram.set_defaults(func=_telegram)


def _telegram(args: argparse.Namespace) -> int:
    from adapters.telegram import cli as telegram_cli

    config = configured(args)
    if args.action == "webhook-info":
        return asyncio.run(_with_http(telegram_cli.webhook_info, config, args.channel))
    change = telegram_cli.set_webhook if args.action == "set-webhook" else telegram_cli.delete_webhook
    return asyncio.run(
        _with_http(functools.partial(change, drop_pending_updates=args.drop_pending_updates), config, args.channel)
    )


async def _with_http(fn: Callable[..., Awaitable[str]], config: GatewayConfig, channel: str) -> int:
    async with httpx.AsyncClient(timeout=30) as http:
        print(await fn(config, channel, http=http))
    return 0
