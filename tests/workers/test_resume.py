"""A worker that died between handing the message to OCS and recording the task id leaves the
turn in ``sending``; the next worker reads the history instead of sending it twice."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import httpx
import redis.asyncio as aioredis

from gateway.conversations import ConversationStore
from gateway.keys import Keys
from gateway.ledger import TurnLedger, TurnState
from gateway.models import ConversationKey, Inbound, InboundKind
from gateway.ocs_client import OCSClient
from tests.conftest import Stack, wait_for
from workers.process import WorkerProcess

CONV = ConversationKey("hooks", "c1")


async def _interrupted_turn(stack: Stack, *, ocs_got_it: bool, sending_at: float) -> None:
    redis = aioredis.Redis.from_url(stack.redis_url)
    keys = Keys()
    inbound = Inbound(
        key=CONV, event_id="msg_lost", kind=InboundKind.MESSAGE, sender_id="u1", text="did you get this?",
        route={"conversation_id": "c1", "in_reply_to": "msg_lost"},
    )
    async with httpx.AsyncClient() as http:
        ocs = OCSClient(name="demo", bot=stack.config.bots["demo"], http=http, redis=redis, keys=keys)
        session = await ocs.start_session(remote_id="webhook:c1", name=None)
        await ConversationStore(redis, keys).save_session(CONV, session)
        if ocs_got_it:
            await ocs.send_message(session, inbound.text)
    await redis.rpush(keys.inbox(CONV), inbound.to_json())
    ledger = TurnLedger(redis, keys)
    turn = await ledger.begin(CONV, inbound.to_json())
    await ledger.update(CONV, turn, state=TurnState.SENDING, session_id=session.session_id, sending_at=sending_at)
    await redis.zadd(keys.active, {str(CONV): time.time()})
    await redis.aclose()


def _start_worker(stack: Stack) -> None:
    stack.worker = WorkerProcess(stack.config, stack.redis_url)
    stack.worker.start()


def test_message_ocs_already_has_is_not_sent_again(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(start_worker=False)
    asyncio.run(_interrupted_turn(stack, ocs_got_it=True, sending_at=time.time()))
    _start_worker(stack)
    wait_for(lambda: stack.receiver.texts("c1"), timeout=20, what="the reply found in the history")
    (session,) = stack.sim.state.list_sessions()
    assert stack.sim.state.user_messages(session.id) == ["did you get this?"]
    assert stack.receiver.texts("c1") == ["Echo #1: did you get this?"]


def test_message_ocs_never_got_is_sent_after_the_grace_period(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(start_worker=False)
    asyncio.run(_interrupted_turn(stack, ocs_got_it=False, sending_at=time.time() - 60))
    _start_worker(stack)
    wait_for(lambda: stack.receiver.texts("c1"), timeout=20, what="the resent message's reply")
    (session,) = stack.sim.state.list_sessions()
    assert stack.sim.state.user_messages(session.id) == ["did you get this?"]
    assert stack.receiver.texts("c1") == ["Echo #1: did you get this?"]
