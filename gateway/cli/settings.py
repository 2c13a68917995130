"""What every command starts from: the configuration (for the operator commands, the running
quickstart's when none is given), the Redis it names, and the quickstart's data directory."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gateway.cli.quickstart import STATE_FILE, find_quickstart
from gateway.config_loading import GatewayConfig, load_config
from gateway.core.errors import ConfigError
from gateway.core.logs import set_message_text
from gateway.core.redaction import install_redaction

__all__ = ["DATA_ENV", "configured", "data_dir", "operated", "redis_url_of"]

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


def operated(args: argparse.Namespace) -> GatewayConfig:
    """What an operator command (``status``, ``dlq``, ``budget``) reads: the configuration
    ``--config`` or the environment names, else the demo configuration of the quickstart running
    from this directory (``gateway/cli/quickstart.py``), with its embedded Redis."""
    config = load_config(args.config)
    if config is None:
        config = _quickstart_config()
    install_redaction(config)
    set_message_text(config.log_message_text)
    return config


def _quickstart_config() -> GatewayConfig:
    data = data_dir()
    running, stale = find_quickstart(data)
    if running is None:
        gone = (f" (the quickstart that wrote {data / STATE_FILE}, pid {stale.pid}, is no longer running)"
                if stale is not None else "")
        raise ConfigError(
            "no configuration: write gateway.yaml (see docs/CONFIG.md) or set OCS_GATEWAY_CONFIG, "
            f"or start the quickstart (./scripts/run) from this directory and ask it{gone}"
        )
    # Late: the demo wiring loads the simulator, which no configured command needs.
    from gateway.cli.demo import demo_config

    return demo_config(running.base_url, data, running.redis_url)


def redis_url_of(config: GatewayConfig) -> str:
    """The Redis URL the processes are given; with ``redis_sentinel`` the sentinels name the
    server instead (gateway/store/connect.py ignores the URL), so any URL set is passed along
    unused and none is needed."""
    url = config.redis_url or os.environ.get("REDIS_URL")
    if not url and config.redis_sentinel is None:
        raise ConfigError("no Redis: set REDIS_URL (or redis_url, or redis_sentinel, in the config)")
    return url or ""
