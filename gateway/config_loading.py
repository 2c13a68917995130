"""The configuration as a process loads it: core's model (``gateway.core.config``) with the
channel types the adapters register (``adapters.CHANNEL_MODELS``), so ``channels.<name>`` is
validated by the model of its ``type``. Core knows no platform; this module, in the assembly,
is where the two meet."""

from __future__ import annotations

import os
from typing import ClassVar

from adapters import CHANNEL_MODELS
from gateway.core import config as core

__all__ = ["GatewayConfig", "load_config"]


class GatewayConfig(core.GatewayConfig):
    """``gateway.core.config.GatewayConfig`` whose channels are every adapter's."""

    channel_models: ClassVar[core.ChannelModels] = CHANNEL_MODELS


def load_config(path: str | os.PathLike[str] | None = None) -> GatewayConfig | None:
    """Load ``path``, else ``$OCS_GATEWAY_CONFIG``, else ``./gateway.yaml``; None if none exists.

    Raises:
        ConfigError: the file exists but cannot be used.
    """
    data = core.read_config(path)
    return None if data is None else GatewayConfig.from_mapping(data)
