"""``ocs-gateway budget``: the OCS request budget every process shares, bucket by bucket."""

from __future__ import annotations

import argparse
import asyncio

from gateway.cli.settings import operated, redis_url_of
from gateway.config_loading import GatewayConfig

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    commands.add_parser("budget", help="OCS request budget: used / limit per bucket, resets in, blocks").set_defaults(
        func=_budget
    )


def _budget(args: argparse.Namespace) -> int:
    config = operated(args)
    return asyncio.run(_budget_async(config))


async def _budget_async(config: GatewayConfig) -> int:
    from gateway.core.keys import Keys
    from gateway.ocs.budget import RequestBudget, format_usage
    from gateway.store.connect import async_redis

    redis = async_redis(config, redis_url_of(config))
    try:
        budget = RequestBudget(redis, Keys(), lambda bot: config.bots[bot].budget)
        print(format_usage(await budget.usage()))
        return 0
    finally:
        await redis.aclose()
