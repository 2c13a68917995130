"""Users in conversation with the gateway, for bench_progress.py and bench_bursts.py: each
conversation sends its bursts one after another (a burst is one or more messages a few hundred ms
apart; a single message is a burst of one), the next only once the answer to the burst's last
message has reached the receiver, after a pause.

Messages are admitted the way the edge stores them (one ``Admitter`` call each, stamped when they
are admitted: the quiet window counts from there). Every message's text and event id name its
conversation, burst and place (``<conversation> b<burst> m<message>``), so a task OCS got and a
callback the receiver got can be tied back to the burst they belong to. The driver only paces the
users: every figure comes from the simulator's and the receiver's own clocks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import redis.asyncio as aioredis

from gateway.core.keys import Keys
from gateway.core.models import ConversationKey, Inbound, InboundKind
from gateway.store.inbox import Admitter, WakeQueue
from workers.broker import ADVANCE, NAMESPACE, QUEUE

__all__ = ["Burst", "Script", "SentBurst", "message_id", "run_conversations"]


@dataclass(frozen=True)
class Burst:
    """``count`` messages, ``gap_s`` apart."""

    count: int = 1
    gap_s: float = 0.0


@dataclass(frozen=True)
class Script:
    """One conversation: its bursts in order, and the pause after each burst's last answer."""

    channel: str
    conversation: str
    bursts: tuple[Burst, ...]
    think_s: float = 1.0
    #: When the first burst goes, after the start (users do not all begin at once).
    start_s: float = 0.0


@dataclass
class SentBurst:
    """What a user sent: each message's event id (= its text) and admission time (epoch s);
    ``answered`` is False when the last message's answer did not come within the timeout."""

    channel: str
    conversation: str
    index: int
    event_ids: list[str] = field(default_factory=list)
    admitted: list[float] = field(default_factory=list)
    answered: bool = False


def message_id(conversation: str, burst: int, message: int) -> str:
    """A message's event id, which is also its text."""
    return f"{conversation} b{burst} m{message}"


def _inbound(channel: str, conversation: str, event_id: str) -> Inbound:
    return Inbound(key=ConversationKey(channel, conversation), event_id=event_id, kind=InboundKind.MESSAGE,
                   sender_id=conversation, text=event_id, received_at=time.time(),
                   route={"conversation_id": conversation, "in_reply_to": event_id})


async def run_conversations(redis_url: str, receiver_url: str, scripts: Sequence[Script], *,
                            answer_timeout_s: float = 120.0) -> list[SentBurst]:
    """Play every script at once; returns every burst sent, in no particular order."""
    client = aioredis.Redis.from_url(redis_url)
    admitter = Admitter(client, Keys(), dedup_ttl_s=3600, wake=WakeQueue.new(namespace=NAMESPACE, queue=QUEUE, actor=ADVANCE))
    answered: set[str] = set()
    waiting: dict[str, asyncio.Future[None]] = {}
    sent: list[SentBurst] = []
    loop = asyncio.get_running_loop()

    async def watch(http: httpx.AsyncClient) -> None:
        # Every answer the receiver got since the start: an answer names each message it answers.
        since = len((await http.get(f"{receiver_url}/all")).json())
        while True:
            rows = (await http.get(f"{receiver_url}/all", params={"since": since})).json()
            since += len(rows)
            for kind, _, reply_to, reply_to_all, _, _ in rows:
                if kind == "progress":
                    continue
                for event_id in reply_to_all or [reply_to]:
                    answered.add(event_id)
                    future = waiting.pop(event_id, None)
                    if future is not None and not future.done():
                        future.set_result(None)
            await asyncio.sleep(0.1)

    async def play(script: Script) -> None:
        await asyncio.sleep(script.start_s)
        for b, burst in enumerate(script.bursts):
            record = SentBurst(script.channel, script.conversation, b)
            sent.append(record)
            start = loop.time()
            for m in range(burst.count):
                await asyncio.sleep(max(0.0, start + m * burst.gap_s - loop.time()))
                event_id = message_id(script.conversation, b, m)
                await admitter(_inbound(script.channel, script.conversation, event_id))
                record.event_ids.append(event_id)
                record.admitted.append(time.time())
            last = record.event_ids[-1]
            if last not in answered:
                future = waiting.setdefault(last, loop.create_future())
                try:
                    await asyncio.wait_for(future, answer_timeout_s)
                except TimeoutError:
                    return  # this user gives up; the others go on
            record.answered = True
            await asyncio.sleep(script.think_s)

    async with httpx.AsyncClient(timeout=30) as http:
        watcher = asyncio.create_task(watch(http))
        try:
            await asyncio.gather(*(play(script) for script in scripts))
        finally:
            watcher.cancel()
            await client.aclose()
    return sent
