"""The offline quickstart: a webhook channel ``demo`` wired to the built-in OCS simulator, and
a reply inbox the ``ocs-gateway send`` command reads. Nothing here runs in production configs."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from adapters.webhook import signing
from gateway.core.config import GatewayConfig, Secret
from gateway.core.errors import SignatureInvalid
from gateway.ocs.simulator import (
    DEMO_CHATBOT_ID,
    SimulatorKnobs,
    SimulatorState,
    create_simulator_app,
)
from gateway.services import Services

__all__ = ["DEMO_CHANNEL", "demo_config", "demo_routes", "demo_secret"]

DEMO_CHANNEL = "demo"


def demo_secret(data_dir: Path) -> str:
    """The demo channel's secret, made once and kept beside the embedded Redis data."""
    path = data_dir / "demo-webhook-secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text("whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())
        path.chmod(0o600)
    return path.read_text().strip()


def demo_config(base_url: str, data_dir: Path, redis_url: str | None) -> GatewayConfig:
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
            "channels": {
                DEMO_CHANNEL: {
                    "type": "webhook",
                    "bot": "simulator",
                    "secret": Secret(demo_secret(data_dir)),
                    "callback_url": f"{base_url}/demo/replies",
                }
            },
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
