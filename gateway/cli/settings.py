"""What every operator command starts from: the configuration, the Redis it names, and the
quickstart's data directory."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gateway.core.config import GatewayConfig, load_config
from gateway.core.errors import ConfigError
from gateway.core.logs import set_message_text
from gateway.core.redaction import install_redaction

__all__ = ["DATA_ENV", "configured", "data_dir", "redis_url_of"]

#: Where the quickstart keeps its embedded Redis and demo secret (default ``./.ocs-gateway``).
DATA_ENV = "OCS_GATEWAY_DATA"


def data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV, ".ocs-gateway"))


def configured(args: argparse.Namespace) -> GatewayConfig:
    """The configuration ``--config`` (or the environment) names, its secrets redacted from now on."""
    config = load_config(args.config)
    if config is None:
        raise ConfigError("no configuration: write gateway.yaml (see docs/CONFIG.md) or set OCS_GATEWAY_CONFIG")
    install_redaction(config)
    set_message_text(config.log_message_text)
    return config


def redis_url_of(config: GatewayConfig) -> str:
    url = config.redis_url or os.environ.get("REDIS_URL")
    if not url:
        raise ConfigError("no Redis: set REDIS_URL (or redis_url in the config)")
    return url
