"""Dramatiq's private Redis layout: the one module that writes it.

The edge puts a conversation's wake-up on the Dramatiq queue inside the script that stores the
inbound (``gateway/store/inbox.py``), and the console's replay wakes a worker the same way
(``gateway/edge/admin/wake.py``). Through the broker's front door (``RedisBroker.enqueue``) the
wake-up would be a second round trip, not atomic with the store, and a synchronous Redis call on
the edge's event loop: the webhook route then acknowledged 0.37 of the requests per second it
does with the wake-up inside the script with fsync ``always`` (0.70 with ``everysec``), and 0.68
(0.75) with the enqueue moved to a thread (``bench/bench_ingest.py --compare-tree``, one session
each, medians of 5 rounds).

So this module does what ``RedisBroker.enqueue`` does, and only the key layout is private: the
message is a ``dramatiq.Message`` encoded by Dramatiq's own encoder, with the fresh
``redis_message_id`` that ``RedisBroker.enqueue`` gives every enqueue, and ``ENQUEUE_LUA`` runs
the three commands of the ``enqueue`` command of Dramatiq's ``dispatch.lua`` on the keys it names
(the enqueuer's heartbeat, the message by id, the id at the queue's tail). That layout is the same
in Dramatiq 2.0.0 to 2.2.1 (``dispatch.lua`` and ``RedisBroker.enqueue`` unchanged) and the suite
holds it to a real Dramatiq worker (``tests/gateway/test_durable_ack.py``); any other installed
version stops the process at start-up (``require_tested_dramatiq``) until someone checks it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from uuid import uuid4

import dramatiq
import redis.asyncio as aioredis
from dramatiq import Message

from gateway.core.errors import ConfigError
from gateway.store.lua import LuaScript

__all__ = ["ENQUEUE_LUA", "TESTED_DRAMATIQ", "WakeQueue", "require_tested_dramatiq"]

#: The Dramatiq releases whose Redis layout this module writes (first, last; major.minor).
TESTED_DRAMATIQ: tuple[tuple[int, int], tuple[int, int]] = ((2, 0), (2, 2))

#: ``dispatch.lua``'s "enqueue", for a script to call with ``WakeQueue.keys`` and
#: ``WakeQueue.args`` in that order.
ENQUEUE_LUA = """
local function dramatiq_enqueue(heartbeats, queue, messages, now_ms, enqueuer_id, message_id, body)
  redis.call('ZADD', heartbeats, now_ms, enqueuer_id)
  redis.call('HSET', messages, message_id, body)
  redis.call('RPUSH', queue, message_id)
end
"""

_ENQUEUE = LuaScript(ENQUEUE_LUA + """
dramatiq_enqueue(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return 1
""")


def require_tested_dramatiq(version: str | None = None) -> None:
    """Refuse to start with a Dramatiq whose Redis layout nobody checked.

    Raises:
        ConfigError: ``version`` (default: the installed one) is outside ``TESTED_DRAMATIQ``.
    """
    version = dramatiq.__version__ if version is None else version
    (first, last) = TESTED_DRAMATIQ
    try:
        installed = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        installed = ()
    if not (len(installed) == 2 and first <= installed <= last):
        raise ConfigError(
            f"dramatiq {version} is installed, but the edge writes Dramatiq's Redis layout itself and that layout "
            f"is checked for dramatiq {first[0]}.{first[1]} to {last[0]}.{last[1]} only: install the version "
            f"constraints.txt names, or check gateway/store/dramatiq_queue.py against the new one"
        )


@dataclass(frozen=True, slots=True)
class WakeQueue:
    """Where a wake-up ``actor(conversation)`` goes: a Dramatiq queue in Dramatiq's Redis layout.

    Parameters:
        namespace: the Dramatiq broker's key prefix (``RedisBroker(namespace=…)``).
        queue: the queue the actor consumes.
        actor: the actor's name; it receives one argument, the conversation key.
        enqueuer_id: this process's id in ``{namespace}:__heartbeats__``, as a ``RedisBroker``'s
            ``broker_id`` would be; workers' maintenance drops it once stale (it holds no acks).
    """

    namespace: str
    queue: str
    actor: str
    enqueuer_id: str

    @classmethod
    def new(cls, *, namespace: str, queue: str, actor: str) -> WakeQueue:
        """A queue for this process, once the installed Dramatiq is known to use this layout.

        Raises:
            ConfigError: an untested Dramatiq (``require_tested_dramatiq``).
        """
        require_tested_dramatiq()
        return cls(namespace, queue, actor, str(uuid4()))

    @property
    def keys(self) -> tuple[str, str, str]:
        """The heartbeats zset, the queue list and the message hash (``dramatiq_enqueue``'s order)."""
        queue_key = f"{self.namespace}:{self.queue}"
        return f"{self.namespace}:__heartbeats__", queue_key, f"{queue_key}.msgs"

    def args(self, conversation: str) -> tuple[int, str, str, bytes]:
        """``dramatiq_enqueue``'s other arguments for a fresh wake-up of ``conversation``: the
        enqueuer's clock in ms (Dramatiq's heartbeat format), its id, the message's Redis id and
        its body."""
        # As RedisBroker.enqueue: a new Redis id per enqueue (a message may be enqueued again).
        redis_message_id = str(uuid4())
        message: Message[object] = Message(
            queue_name=self.queue, actor_name=self.actor, args=(conversation,), kwargs={},
            options={"redis_message_id": redis_message_id},
        )
        return int(time.time() * 1000), self.enqueuer_id, redis_message_id, message.encode()

    async def enqueue(self, redis: aioredis.Redis, conversation: str) -> None:
        """Put a wake-up of ``conversation`` on the queue on its own (one EVALSHA).

        Raises:
            RedisError, OSError: Redis did not take it.
        """
        await _ENQUEUE(redis, list(self.keys), list(self.args(conversation)))
