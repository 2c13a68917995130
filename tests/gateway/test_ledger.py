"""The turn ledger (``gateway/store/ledger.py``) against a real Redis: a turn's inbound is parsed
once however often the turn changes, and what the ledger stores is the same as before."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis.asyncio as aioredis

from gateway.core.keys import Keys, as_text
from gateway.core.models import ConversationKey, Inbound, InboundKind
from gateway.store.lease import Lease
from gateway.store.ledger import TurnLedger, TurnState

KEYS = Keys()
CONV = ConversationKey("hooks", "c-1")


def _inbound(text: str = "hello") -> Inbound:
    return Inbound(key=CONV, event_id=f"ev-{text}", kind=InboundKind.MESSAGE, sender_id="u", text=text,
                   route={"conversation_id": "c-1"}, received_at=1_700_000_000.0)


class ParseCounter:
    """Counts calls of ``Inbound.from_json`` and hands each to the real one."""

    def __init__(self) -> None:
        self.calls = 0
        self._real = Inbound.from_json

    def __call__(self, raw: str | bytes) -> Inbound:
        self.calls += 1
        return self._real(raw)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


async def test_a_turn_parses_its_inbound_once_across_its_updates(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = TurnLedger(client, KEYS)
    lease = await Lease.acquire(client, KEYS.lease(CONV), ttl_s=60)
    assert lease is not None
    parses = ParseCounter()
    monkeypatch.setattr(Inbound, "from_json", parses)
    turn, ops = ledger.begin(CONV, _inbound().to_json(), now=1_700_000_001.0)
    await lease.run(ops)
    for attempt in range(1, 11):
        turn, ops = ledger.update(CONV, turn, attempts=attempt, last_error=f"try {attempt}", next_at=1_700_000_010.0 + attempt)
        await lease.run(ops)
    turn, ops = ledger.update(CONV, turn, state=TurnState.SENDING, expect_count=3)
    await lease.run(ops)
    turn = replace(turn, polls=turn.polls + 1)  # as the runner changes a turn in memory
    assert turn.inbound == _inbound()
    assert parses.calls == 1, f"the inbound was parsed {parses.calls} times for one turn"

    loaded = (await ledger.load(CONV)).turn
    assert loaded == replace(turn, polls=0)  # what Redis holds reads back as the same turn
    assert parses.calls == 2  # a turn read from Redis parses its own inbound, once
    assert sorted(as_text(key) for key in await client.hkeys(KEYS.turn(CONV))) == [
        "attempts", "expect_count", "id", "inbound_raw", "last_error", "next_at", "state",
    ]


def test_a_turn_given_another_inbound_parses_that_one() -> None:
    ledger = TurnLedger(aioredis.Redis(), KEYS)  # begin and update build writes; nothing is sent
    turn, _ = ledger.begin(CONV, _inbound("first").to_json(), now=1.0)
    moved, _ = ledger.update(CONV, turn, inbound_raw=_inbound("second").to_json())
    assert (turn.inbound.text, moved.inbound.text) == ("first", "second")
