"""``ocs-gateway``: run the gateway (all-in-one, web, worker), the simulator, the demo sender,
the dead-letter tools and the platform set-up helpers."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import shlex
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import httpx

from gateway.config_loading import GatewayConfig, load_config
from gateway.core.errors import ConfigError
from gateway.core.logs import LogFormat, configure_logging, set_message_text
from gateway.core.redaction import install_redaction

if TYPE_CHECKING:
    from gateway.store.dead_letters import DeadLetterStore

__all__ = ["main"]

DATA_DIR = Path(os.environ.get("OCS_GATEWAY_DATA", ".ocs-gateway"))
log = logging.getLogger("ocsgw")
#: The levels ``--log-level`` / ``$LOG_LEVEL`` accept (any case).
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.log_format not in (None, *get_args(LogFormat)):  # argparse checks the option, not the env default
        parser.error(f"OCS_GATEWAY_LOG_FORMAT: choose from {', '.join(get_args(LogFormat))}, not {args.log_format!r}")
    if str(args.log_level).upper() not in _LOG_LEVELS:  # logging would raise before any line is written
        parser.error(f"--log-level / LOG_LEVEL: choose from {', '.join(_LOG_LEVELS)}, not {args.log_level!r}")
    # JSON or key=value lines, ours and the SDKs', each with the ids bound where work happens.
    configure_logging(log_format=args.log_format, level=args.log_level)
    # Token shapes from the first line on; the config's own secrets join once it is loaded.
    install_redaction()
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"ocs-gateway: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ocs-gateway", description=__doc__)
    parser.add_argument("--config", help="config file (default: $OCS_GATEWAY_CONFIG or ./gateway.yaml)")
    parser.add_argument(
        "--log-format", choices=get_args(LogFormat), default=os.environ.get("OCS_GATEWAY_LOG_FORMAT") or None,
        help="json (one object per line) or text (key=value); default $OCS_GATEWAY_LOG_FORMAT, else text on a terminal, json otherwise",
    )
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"), help="default $LOG_LEVEL or INFO")
    parser.set_defaults(func=_run)
    sub = parser.add_subparsers(title="commands")

    run = sub.add_parser("run", help="web + worker in one process (the default; embedded Redis and demo when unconfigured)")
    _serve_args(run)
    run.set_defaults(func=_run)
    web = sub.add_parser("web", help="the HTTP edge only (Procfile: web)")
    _serve_args(web, host=os.environ.get("HOST", "0.0.0.0"))
    web.set_defaults(func=_web)
    sub.add_parser("worker", help="the Dramatiq workers only (Procfile: worker)").set_defaults(func=_worker)
    sub.add_parser("check-config", help="load the config and report problems").set_defaults(func=_check)

    sim = sub.add_parser("sim", help="serve the OCS simulator alone")
    sim.add_argument("--port", type=int, default=8100)
    sim.add_argument("--latency", type=float, default=1.0, help="seconds before the bot answers")
    sim.set_defaults(func=_sim)

    send = sub.add_parser("send", help="send a signed message to the demo channel and print the reply")
    send.add_argument("text")
    send.add_argument("--conversation", default="quickstart")
    send.add_argument("--url", default="http://127.0.0.1:8000")
    send.add_argument("--timeout", type=float, default=30.0)
    send.set_defaults(func=_send)

    dlq = sub.add_parser("dlq", help="dead letters: list | count | show ID | replay ID | drop ID")
    dlq.add_argument("action", choices=["list", "count", "show", "replay", "drop"])
    dlq.add_argument("id", nargs="?")
    dlq.add_argument("--limit", type=int, default=50, help="list: letters per page, newest first (default 50)")
    dlq.add_argument("--channel", help="list/count: only this channel")
    dlq.add_argument("--since", help="list/count: parked since a span back (1h, 2d) or a date (2026-11-01, UTC)")
    dlq.add_argument("--cursor", help="list: continue after a previous page (printed with it)")
    dlq.add_argument("--all", action="store_true", help="list: every page, not one")
    dlq.set_defaults(func=_dlq)

    sub.add_parser("budget", help="OCS request budget: used / limit per bucket, resets in, blocks").set_defaults(
        func=_budget
    )

    status = sub.add_parser("status", help="the operator's summary: channels, workers, turns in flight, delays, DLQ")
    status.add_argument("--json", action="store_true", help="print the summary as JSON (what /admin/api/summary gives)")
    status.add_argument("--no-platforms", action="store_true", help="do not ask the platforms (Telegram's webhook)")
    status.set_defaults(func=_status)

    telegram = sub.add_parser("telegram", help="set-webhook | delete-webhook | webhook-info for a Telegram channel")
    telegram.add_argument("action", choices=["set-webhook", "delete-webhook", "webhook-info"])
    telegram.add_argument("--channel", required=True)
    telegram.add_argument(
        "--drop-pending-updates", action="store_true",
        help="set-webhook/delete-webhook: discard the updates Telegram holds for the bot",
    )
    telegram.set_defaults(func=_telegram)

    slack = sub.add_parser("slack", help="manifest: print the Slack app manifest for a channel")
    slack.add_argument("action", choices=["manifest"])
    slack.add_argument("--channel", required=True)
    slack.add_argument(
        "--socket-mode", action="store_true", default=None,
        help="a Socket Mode app (no request URLs) even if the channel does not say socket_mode: true",
    )
    slack.set_defaults(func=_slack)
    return parser


def _serve_args(parser: argparse.ArgumentParser, *, host: str | None = None) -> None:
    # `run` is the laptop command (loopback); `web` is the Procfile command (all interfaces).
    parser.add_argument("--host", default=host or os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))


# -- configuration ------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> GatewayConfig:
    config = load_config(args.config)
    if config is None:
        raise ConfigError("no configuration: write gateway.yaml (see docs/CONFIG.md) or set OCS_GATEWAY_CONFIG")
    install_redaction(config)
    set_message_text(config.log_message_text)
    return config


def _redis_url(config: GatewayConfig) -> str:
    url = config.redis_url or os.environ.get("REDIS_URL")
    if not url:
        raise ConfigError("no Redis: set REDIS_URL (or redis_url in the config)")
    return url


# -- commands -----------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    """Everything in one process: the quickstart, and small single-host deployments."""
    import uvicorn

    from gateway.cli.demo import demo_config, demo_routes, demo_secret
    from gateway.edge.app import create_app
    from gateway.services import worker_process
    from gateway.store.embedded_redis import EmbeddedRedis

    host = getattr(args, "host", "127.0.0.1")
    port = getattr(args, "port", 8000)
    base_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    config = load_config(args.config)
    embedded: EmbeddedRedis | None = None
    redis_url = (config.redis_url if config else None) or os.environ.get("REDIS_URL")
    if not redis_url:
        embedded = EmbeddedRedis(DATA_DIR / "redis")
        redis_url = embedded.start()
        log.info("started an embedded Redis at %s (data in %s)", redis_url, embedded.data_dir)
    extra = []
    demo = config is None
    if config is None:
        config = demo_config(base_url, DATA_DIR, redis_url)
        extra = demo_routes(base_url, demo_secret(DATA_DIR))
    install_redaction(config)
    set_message_text(config.log_message_text)
    worker = worker_process(config, redis_url)
    worker.start()
    app = create_app(config, redis_url, extra_routes=extra)
    if demo:
        _print_demo_banner(base_url, telegram="telegram" in config.channels, slack="slack" in config.channels)
    try:
        # log_config=None: uvicorn's loggers go through the root handlers and their redaction.
        uvicorn.run(app, host=host, port=port, log_level="warning", log_config=None)
    finally:
        worker.stop()
        if embedded:
            embedded.stop()
    return 0


def _print_demo_banner(base_url: str, *, telegram: bool = False, slack: bool = False) -> None:
    print(
        f"\nocs-gateway is running at {base_url} with a demo channel wired to the built-in OCS simulator.\n"
        "Paste this in another terminal to send a signed message and see the bot's reply:\n\n"
        f"    {_command_name()} send \"Hello, bot!\" --url {base_url}\n",
        flush=True,
    )
    if telegram:
        print(
            "Telegram: long polling with $TELEGRAM_BOT_TOKEN (no public URL needed); message your bot and\n"
            "the simulator answers. If a webhook is still set for the bot, the log says how to delete it.\n",
            flush=True,
        )
    if slack:
        print(
            "Slack: Socket Mode with $SLACK_APP_TOKEN and $SLACK_BOT_TOKEN (no public URL needed); DM your app\n"
            "or mention it in a channel it was invited to, and the simulator answers in the thread.\n",
            flush=True,
        )


def _command_name() -> str:
    """How the user reached us (``.venv/bin/ocs-gateway`` from scripts/run), so the pasted
    command works without activating the virtualenv."""
    invoked = sys.argv[0]
    if Path(invoked).name == "ocs-gateway":
        try:
            return str(Path(invoked).resolve().relative_to(Path.cwd()))
        except ValueError:
            return invoked
    return "ocs-gateway"


def _web(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.edge.app import create_app

    config = _config(args)
    uvicorn.run(
        create_app(config, _redis_url(config)), host=args.host, port=args.port, log_level="info", proxy_headers=True,
        log_config=None,  # the access log goes through the root handlers and their redaction
    )  # fmt: skip
    return 0


def _worker(args: argparse.Namespace) -> int:
    from gateway.services import worker_process
    from workers.process import run_worker

    config = _config(args)
    run_worker(worker_process(config, _redis_url(config)))
    return 0


def _check(args: argparse.Namespace) -> int:
    config = _config(args)
    print(f"ok: {len(config.bots)} bot(s), {len(config.channels)} channel(s)")
    for name, channel in config.channels.items():
        print(f"  {name}: {channel.type} → bot {channel.bot}")
    return 0


def _sim(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.ocs.simulator import (
        SimulatorKnobs,
        SimulatorState,
        create_simulator_app,
    )

    state = SimulatorState.demo(f"http://127.0.0.1:{args.port}", SimulatorKnobs(reply_latency_s=args.latency))
    print(f"OCS simulator on http://127.0.0.1:{args.port} (client demo-client / demo-secret)", flush=True)
    uvicorn.run(create_simulator_app(state), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


def _send(args: argparse.Namespace) -> int:
    """Sign a message like any webhook sender would, then wait for the reply in the demo inbox."""
    from adapters.webhook import signing
    from gateway.cli.demo import DEMO_CHANNEL, demo_secret

    key = signing.decode_secret(demo_secret(DATA_DIR))
    body = json.dumps(
        {"conversation_id": args.conversation, "sender": {"id": "cli-user", "name": "You"}, "text": args.text}
    ).encode()
    msg_id = f"msg_{uuid.uuid4().hex}"
    headers = signing.signed_headers(key, msg_id, body)
    with httpx.Client(timeout=10) as client:
        response = client.post(f"{args.url}/webhooks/{DEMO_CHANNEL}", content=body, headers=headers)
        print(f"→ sent ({response.status_code}): {args.text}")
        if response.status_code != 200:
            print(response.text, file=sys.stderr)
            return 1
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            replies = client.get(f"{args.url}/demo/replies/{args.conversation}").json()
            mine = [r for r in replies if r.get("in_reply_to") == msg_id and r.get("text")]
            if mine:
                for reply in mine:
                    print(f"← bot: {reply['text']}")
                return 0
            time.sleep(0.3)
    print("no reply yet; is the worker running?", file=sys.stderr)
    return 1


def _dlq(args: argparse.Namespace) -> int:
    config = _config(args)
    return asyncio.run(_dlq_async(args, config))


async def _dlq_async(args: argparse.Namespace, config: GatewayConfig) -> int:
    import redis.asyncio as aioredis

    from gateway.core.keys import Keys
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
    redis = aioredis.Redis.from_url(_redis_url(config))
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
        broker = make_broker(_redis_url(config))
        enqueue(broker, ADVANCE, str(conv))
        print(f"replayed {args.id} into {conv}")
        return 0
    finally:
        await redis.aclose()


def _budget(args: argparse.Namespace) -> int:
    config = _config(args)
    return asyncio.run(_budget_async(config))


async def _budget_async(config: GatewayConfig) -> int:
    import redis.asyncio as aioredis

    from gateway.core.keys import Keys
    from gateway.ocs.budget import RequestBudget, format_usage

    redis = aioredis.Redis.from_url(_redis_url(config))
    try:
        budget = RequestBudget(redis, Keys(), lambda bot: config.bots[bot].budget)
        print(format_usage(await budget.usage()))
        return 0
    finally:
        await redis.aclose()


def _status(args: argparse.Namespace) -> int:
    config = _config(args)
    return asyncio.run(_status_async(args, config))


async def _status_async(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.edge.admin.app import summary_json
    from gateway.edge.admin.summary import gather_summary
    from gateway.edge.admin.text import format_summary
    from gateway.services import Services

    services = await Services.open(config, _redis_url(config))
    try:
        summary = await gather_summary(services, platforms=not args.no_platforms)
    finally:
        await services.aclose()
    print(json.dumps(summary_json(summary), indent=2) if args.json else format_summary(summary))
    return 1 if summary.stuck or not summary.workers_alive else 0


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


def _telegram(args: argparse.Namespace) -> int:
    from adapters.telegram import cli as telegram_cli

    config = _config(args)
    if args.action == "webhook-info":
        return asyncio.run(_with_http(telegram_cli.webhook_info, config, args.channel))
    change = telegram_cli.set_webhook if args.action == "set-webhook" else telegram_cli.delete_webhook
    return asyncio.run(
        _with_http(functools.partial(change, drop_pending_updates=args.drop_pending_updates), config, args.channel)
    )


async def _with_http(fn: Any, config: GatewayConfig, channel: str) -> int:
    async with httpx.AsyncClient(timeout=30) as http:
        print(await fn(config, channel, http=http))
    return 0


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
        config = _config(args)
    print(manifest(config, args.channel, socket_mode=args.socket_mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
