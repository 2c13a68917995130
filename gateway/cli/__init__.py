"""``ocs-gateway``: run the gateway (all-in-one, web, worker), the simulator, the demo sender,
the dead-letter tools and the platform set-up helpers.

Each command group lives in a module of its own (``serve``, ``dlq``, ``status``…, each with its
``register``); this one assembles the parser and runs the command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import get_args

from gateway.cli import budget, check, dlq, send, serve, sim, slack, status, telegram
from gateway.core.errors import ConfigError
from gateway.core.logs import LogFormat, configure_logging
from gateway.core.redaction import install_redaction

__all__ = ["main"]

#: The levels ``--log-level`` / ``$LOG_LEVEL`` accept (any case).
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: In the order ``--help`` lists them.
_GROUPS = (serve, check, sim, send, dlq, budget, status, telegram, slack)


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
    parser = argparse.ArgumentParser(prog="ocs-gateway", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--config", help="config file (default: $OCS_GATEWAY_CONFIG or ./gateway.yaml)")
    parser.add_argument(
        "--log-format", choices=get_args(LogFormat), default=os.environ.get("OCS_GATEWAY_LOG_FORMAT") or None,
        help="json (one object per line) or text (key=value); default $OCS_GATEWAY_LOG_FORMAT, else text on a terminal, json otherwise",
    )
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"), help="default $LOG_LEVEL or INFO")
    parser.set_defaults(func=serve.run)
    commands = parser.add_subparsers(title="commands")
    for group in _GROUPS:
        group.register(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
