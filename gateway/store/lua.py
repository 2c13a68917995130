"""Lua scripts sent by their SHA1, not their text.

``EVALSHA`` costs one short request; the script's text travels only when Redis does not know
it yet (after a restart or ``SCRIPT FLUSH``), and the ``EVAL`` that follows teaches it again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

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
            return await redis.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]
        except NoScriptError:
            return await redis.eval(self.text, len(keys), *keys, *args)  # type: ignore[misc]
