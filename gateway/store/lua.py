"""Lua scripts sent by their SHA1, not their text: the one way the gateway runs Lua.

``EVALSHA`` costs one short request; the script's text travels only when Redis does not know
it yet (after a restart or ``SCRIPT FLUSH``): then ``SCRIPT LOAD`` teaches it and the call is
made again. Unlike redis-py's ``register_script``, a ``LuaScript`` is bound to no client, so a
module can declare its scripts once and run them on whichever client it is handed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

__all__ = ["LuaScript"]


@dataclass(frozen=True, slots=True)
class LuaScript:
    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())

    async def __call__(self, redis: aioredis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.text)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
