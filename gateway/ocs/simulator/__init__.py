"""A faithful fake of the Open Chat Studio Chat API (see docs/OCS.md §8)."""

from gateway.ocs.simulator.app import create_simulator_app
from gateway.ocs.simulator.edge import SimulatedConnectionDrop
from gateway.ocs.simulator.latency import LatencyModel
from gateway.ocs.simulator.state import (
    DEMO_CHATBOT_ID,
    ROUTE_NAMES,
    SimChatbot,
    SimFile,
    SimMessage,
    SimOAuthApp,
    SimSession,
    SimTask,
    SimulatorKnobs,
    SimulatorState,
)

__all__ = [
    "DEMO_CHATBOT_ID",
    "LatencyModel",
    "ROUTE_NAMES",
    "SimChatbot",
    "SimFile",
    "SimMessage",
    "SimOAuthApp",
    "SimSession",
    "SimTask",
    "SimulatedConnectionDrop",
    "SimulatorKnobs",
    "SimulatorState",
    "create_simulator_app",
]
