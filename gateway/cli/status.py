"""``ocs-gateway status``: the operator's summary in a terminal (the console's overview), with an
exit status a cron job can act on."""

from __future__ import annotations

import argparse
import asyncio
import json

from gateway.cli.settings import operated, redis_url_of
from gateway.config_loading import GatewayConfig

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser("status", help="the operator's summary: channels, workers, turns in flight, delays, DLQ")
    status.add_argument("--json", action="store_true", help="print the summary as JSON (what /admin/api/summary gives)")
    status.add_argument("--no-platforms", action="store_true", help="do not ask the platforms (Telegram's webhook)")
    status.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    config = operated(args)
    return asyncio.run(_status_async(args, config))


async def _status_async(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.edge.admin.app import summary_json
    from gateway.edge.admin.summary import gather_summary
    from gateway.edge.admin.text import format_summary
    from gateway.services import Services

    services = await Services.open(config, redis_url_of(config))
    try:
        summary = await gather_summary(services, platforms=not args.no_platforms)
    finally:
        await services.aclose()
    print(json.dumps(summary_json(summary), indent=2) if args.json else format_summary(summary))
    return 1 if summary.stuck or not summary.workers_alive else 0
