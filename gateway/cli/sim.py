"""``ocs-gateway sim``: the OCS simulator alone, for trying a configured gateway without OCS."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = commands.add_parser("sim", help="serve the OCS simulator alone")
    sim.add_argument("--port", type=int, default=8100)
    sim.add_argument("--latency", type=float, default=1.0, help="seconds before the bot answers")
    sim.set_defaults(func=_sim)


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
