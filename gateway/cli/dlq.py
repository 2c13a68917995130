"""``ocs-gateway dlq list | count | show | replay | drop``: the dead letters, read and acted on
from a terminal."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from typing import TYPE_CHECKING

from gateway.cli.settings import operated, redis_url_of
from gateway.config_loading import GatewayConfig

if TYPE_CHECKING:
    from gateway.store.dead_letters import DeadLetterStore

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = commands.add_parser("dlq", help="dead letters: list | count | show ID | replay ID | drop ID")
    dlq.add_argument("action", choices=["list", "count", "show", "replay", "drop"])
    dlq.add_argument("id", nargs="?")
    dlq.add_argument("--limit", type=int, default=50, help="list: letters per page, newest first (default 50)")
    dlq.add_argument("--channel", help="list/count: only this channel")
    dlq.add_argument("--since", help="list/count: parked since a span back (1h, 2d) or a date (2026-11-01, UTC)")
    dlq.add_argument("--cursor", help="list: continue after a previous page (printed with it)")
    dlq.add_argument("--all", action="store_true", help="list: every page, not one")
    dlq.set_defaults(func=_dlq)


def _dlq(args: argparse.Namespace) -> int:
    config = operated(args)
    return asyncio.run(_dlq_async(args, config))


async def _dlq_async(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.core.keys import Keys
    from gateway.store.connect import async_redis
    from gateway.store.dead_letters import DeadLetterStore, since_from_text
    from workers.broker import ADVANCE, enqueue, make_broker

    try:
        since = since_from_text(args.since, now=time.time()) if args.since else None
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.limit < 1:
        print("--limit must be at least 1", file=sys.stderr)
        return 2
    redis = async_redis(config, redis_url_of(config))
    store = DeadLetterStore(redis, Keys(), retention_days=config.dead_letter_retention_days)
    try:
        if args.action == "list":
            return await _dlq_list(store, args, since)
        if args.action == "count":
            counts = await store.count(since=since)
            for (channel, stage), n in sorted(counts.items()):
                if args.channel is None or channel == args.channel:
                    print(f"{n:>7}  {channel}  {stage}")
            return 0
        if not args.id:
            print(f"dlq {args.action} needs an id (see: ocs-gateway dlq list)", file=sys.stderr)
            return 2
        if args.action == "show":
            found = await store.get(args.id)
            if found is None:
                print(f"no dead letter {args.id}", file=sys.stderr)
                return 1
            print(json.dumps(json.loads(found.to_json()), indent=2, ensure_ascii=False))
            return 0
        if args.action == "drop":
            return 0 if await store.drop(args.id) else 1
        try:
            conv = await store.replay(args.id)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 1
        if conv is None:
            print(f"no dead letter {args.id}", file=sys.stderr)
            return 1
        broker = make_broker(config, redis_url_of(config))
        enqueue(broker, ADVANCE, str(conv))
        print(f"replayed {args.id} into {conv}")
        return 0
    finally:
        await redis.aclose()


async def _dlq_list(store: DeadLetterStore, args: argparse.Namespace, since: float | None) -> int:
    """Print letters newest first; one page, or every page with ``--all``. The command for the
    next page goes to stderr so that stdout stays one letter per line."""
    cursor = args.cursor
    while True:
        try:
            page = await store.list(limit=args.limit, cursor=cursor, channel=args.channel, since=since)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        for letter in page:
            parked = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(letter.parked_at))
            print(f"{letter.id}  {parked}Z  {letter.conversation}  {letter.stage}  {letter.error[:80]}")
        cursor = page.next_cursor
        if cursor is None:
            return 0
        if not args.all:
            command = ["ocs-gateway", "dlq", "list", "--limit", str(args.limit), "--cursor", cursor]
            if args.channel:
                command += ["--channel", args.channel]
            if since is not None:  # absolute, so that "1h" does not move between pages
                command += ["--since", repr(since)]
            print("more: " + " ".join(shlex.quote(part) for part in command), file=sys.stderr)
            return 0
