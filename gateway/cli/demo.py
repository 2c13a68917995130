"""The offline quickstart: a webhook channel ``demo`` wired to the built-in OCS simulator, and
a reply inbox the ``ocs-gateway send`` command reads; with ``TELEGRAM_BOT_TOKEN`` set, also a
Telegram channel ``telegram`` that long-polls (no public URL) and answers with the same
simulator; with ``SLACK_APP_TOKEN`` and ``SLACK_BOT_TOKEN`` set, a Slack channel ``slack`` over
Socket Mode (no public URL either). Nothing here runs in production configs."""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from adapters.webhook import signing
from gateway.config_loading import GatewayConfig
from gateway.core.config import Secret
from gateway.core.errors import SignatureInvalid
from gateway.ocs.simulator import (
    DEMO_CHATBOT_ID,
    SimulatorKnobs,
    SimulatorState,
    create_simulator_app,
)
from gateway.services import Services

__all__ = [
    "DEMO_CHANNEL",
    "DEMO_SLACK_CHANNEL",
    "DEMO_TELEGRAM_CHANNEL",
    "SLACK_APP_TOKEN_ENV",
    "SLACK_BOT_TOKEN_ENV",
    "TELEGRAM_TOKEN_ENV",
    "demo_config",
    "demo_routes",
    "demo_secret",
    "demo_slack_channel",
]

DEMO_CHANNEL = "demo"
DEMO_TELEGRAM_CHANNEL = "telegram"
#: Set it (a token from @BotFather) and the quickstart talks to that bot by long polling.
TELEGRAM_TOKEN_ENV = "TELEGRAM_BOT_TOKEN"
DEMO_SLACK_CHANNEL = "slack"
#: Set both (a Socket Mode app's tokens) and the quickstart answers in Slack over Socket Mode.
SLACK_APP_TOKEN_ENV = "SLACK_APP_TOKEN"
SLACK_BOT_TOKEN_ENV = "SLACK_BOT_TOKEN"


def demo_slack_channel() -> dict[str, Any]:
    """The quickstart's Slack channel: Socket Mode (no public URL), tokens read from the
    environment like every secret."""
    return {
        "type": "slack", "bot": "simulator", "socket_mode": True,
        "app_token": f"${{{SLACK_APP_TOKEN_ENV}}}", "bot_token": f"${{{SLACK_BOT_TOKEN_ENV}}}",
    }  # fmt: skip


def demo_secret(data_dir: Path) -> str:
    """The demo channel's secret, made once and kept beside the embedded Redis data."""
    path = data_dir / "demo-webhook-secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text("whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())
        path.chmod(0o600)
    return path.read_text().strip()


def demo_config(base_url: str, data_dir: Path, redis_url: str | None) -> GatewayConfig:
    channels: dict[str, Any] = {
        DEMO_CHANNEL: {
            "type": "webhook",
            "bot": "simulator",
            "secret": Secret(demo_secret(data_dir)),
            "callback_url": f"{base_url}/demo/replies",
        }
    }
    if os.environ.get(TELEGRAM_TOKEN_ENV):
        # A reference, not the value: the token is read where every secret is, and redacted.
        channels[DEMO_TELEGRAM_CHANNEL] = {
            "type": "telegram", "bot": "simulator", "mode": "polling", "token": f"${{{TELEGRAM_TOKEN_ENV}}}",
        }
    if os.environ.get(SLACK_APP_TOKEN_ENV) and os.environ.get(SLACK_BOT_TOKEN_ENV):
        channels[DEMO_SLACK_CHANNEL] = demo_slack_channel()
    return GatewayConfig.from_mapping(
        {
            "redis_url": redis_url,
            "bots": {
                "simulator": {
                    "base_url": f"{base_url}/sim",
                    "chatbot_id": DEMO_CHATBOT_ID,
                    "auth": "oauth",
                    "client_id": "demo-client",
                    "client_secret": Secret("demo-secret"),
                }
            },
            "channels": channels,
        }
    )


def demo_routes(base_url: str, secret: str) -> list[BaseRoute]:
    """The simulator at ``/sim`` and the reply inbox at ``/demo/replies``."""
    key = signing.decode_secret(secret)
    simulator = create_simulator_app(SimulatorState.demo(f"{base_url}/sim", SimulatorKnobs(reply_latency_s=1.0)))

    async def receive(request: Request) -> Response:
        body = await request.body()
        try:
            signing.verify(key, {k.lower(): v for k, v in request.headers.items()}, body)
        except SignatureInvalid as exc:
            return JSONResponse({"error": str(exc)}, status_code=401)
        message = json.loads(body)
        services: Services = request.app.state.services
        await services.redis.rpush(services.keys.demo_replies(message["conversation_id"]), body)
        return JSONResponse({"ok": True})

    async def replies(request: Request) -> Response:
        services: Services = request.app.state.services
        raw = await services.redis.lrange(services.keys.demo_replies(request.path_params["conversation"]), 0, -1)
        return JSONResponse([json.loads(item) for item in raw])

    return [
        Route("/demo/replies", receive, methods=["POST"]),
        Route("/demo/replies/{conversation}", replies, methods=["GET"]),
        Mount("/sim", app=simulator),
    ]
