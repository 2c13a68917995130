"""``ocs-gateway run | web | worker``: the gateway's processes. ``run`` is web and worker in one
process, and with nothing configured the quickstart (embedded Redis, demo channel, simulator)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from gateway.cli.quickstart import announced
from gateway.cli.settings import configured, data_dir, redis_url_of
from gateway.config_loading import load_config
from gateway.core.logs import set_message_text
from gateway.core.redaction import install_redaction

__all__ = ["register", "run"]

log = logging.getLogger("ocsgw")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run_parser = commands.add_parser(
        "run", help="web + worker in one process (the default; embedded Redis and demo when unconfigured)"
    )
    _serve_args(run_parser)
    run_parser.set_defaults(func=run)
    web = commands.add_parser("web", help="the HTTP edge only (Procfile: web)")
    _serve_args(web, host=os.environ.get("HOST", "0.0.0.0"))
    web.set_defaults(func=_web)
    commands.add_parser("worker", help="the Dramatiq workers only (Procfile: worker)").set_defaults(func=_worker)


def _serve_args(parser: argparse.ArgumentParser, *, host: str | None = None) -> None:
    # `run` is the laptop command (loopback); `web` is the Procfile command (all interfaces).
    parser.add_argument("--host", default=host or os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))


def run(args: argparse.Namespace) -> int:
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
    redis_url = (config.redis_url if config else None) or os.environ.get("REDIS_URL") or ""
    data = data_dir()
    # With redis_sentinel the sentinels name the server (gateway/store/connect.py): no URL needed.
    if not redis_url and (config is None or config.redis_sentinel is None):
        embedded = EmbeddedRedis(data / "redis")
        redis_url = embedded.start()
        log.info("started an embedded Redis at %s (data in %s)", redis_url, embedded.data_dir)
    extra = []
    demo = config is None
    if config is None:
        config = demo_config(base_url, data, redis_url)
        extra = demo_routes(base_url, demo_secret(data))
    install_redaction(config)
    set_message_text(config.log_message_text)
    worker = worker_process(config, redis_url)
    worker.start()
    app = create_app(config, redis_url, extra_routes=extra)
    if demo:
        _print_demo_banner(base_url, telegram="telegram" in config.channels, slack="slack" in config.channels)
    terminated = False
    try:
        with contextlib.ExitStack() as serving:
            if demo:  # so that `ocs-gateway status`, `dlq` and `budget` find this Redis and config
                serving.enter_context(announced(data, base_url=base_url, redis_url=embedded.url if embedded else None))
            serving.enter_context(_sigterm_unwinds())
            # log_config=None: uvicorn's loggers go through the root handlers and their redaction;
            # proxy_headers=False: the app believes X-Forwarded-* itself, from forwarded_allow_ips.
            uvicorn.run(app, host=host, port=port, log_level="warning", log_config=None, proxy_headers=False)
    except _Terminated:
        terminated = True
    finally:
        worker.stop()
        if embedded:
            embedded.stop()
    if terminated:  # end as uvicorn would have: by the signal, now that nothing is left running
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
    return 0


class _Terminated(Exception):
    """SIGTERM arrived and uvicorn has stopped serving."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """uvicorn stops gracefully on SIGTERM, then raises it again under the handler it found: the
    default one would end the process there, before the worker, the embedded redis-server and the
    quickstart's announcement are stopped. Under this one the signal unwinds through them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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

    config = configured(args)
    uvicorn.run(
        create_app(config, redis_url_of(config)), host=args.host, port=args.port, log_level="info",
        proxy_headers=False,  # the app believes X-Forwarded-* itself, from forwarded_allow_ips
        log_config=None,  # the access log goes through the root handlers and their redaction
    )  # fmt: skip
    return 0


def _worker(args: argparse.Namespace) -> int:
    from gateway.services import worker_process
    from workers.process import run_worker

    config = configured(args)
    run_worker(worker_process(config, redis_url_of(config)))
    return 0
