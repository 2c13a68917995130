"""Telegram pacing by chat type (docs/PLATFORMS.md §1.5): ~1 message/s in a private chat, at most ~20
a minute in a group, ~30/s for the whole bot, shared by every worker through Redis.

The intervals are configurable, so the end-to-end test shrinks the group interval and checks
the ratio on the times the fake Bot API recorded, not the test's duration. The bot-wide rate is
checked on the grant times pace returns, on Redis's clock.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from adapters.telegram import outbound
from adapters.telegram.outbound import BOT_INTERVAL_S, MAX_PACING_SLEEP_S, pace
from gateway.core.config import Secret
from gateway.core.errors import PacingWait
from gateway.core.keys import Keys
from gateway.core.models import Outgoing
from tests.adapters._telegram import SECRET, TOKEN, MakeEnv, make_telegram  # noqa: F401 - fixture
from tests.conftest import Stack, wait_for
from tests.fakes.telegram_api import FakeTelegram, fake_telegram, message_update  # noqa: F401 - fixture

GROUP = -1001122334455
TEXT = Outgoing(text="hello")


def group_route(chat_id: int = GROUP) -> dict[str, str]:
    return {"chat_id": str(chat_id), "chat_type": "supergroup"}


def private_route(chat_id: int) -> dict[str, str]:
    return {"chat_id": str(chat_id), "chat_type": "private"}


async def test_a_group_waits_the_group_interval_and_a_private_chat_the_private_one(make_telegram: MakeEnv) -> None:
    # Intervals far above the longest pacing sleep: the second send is refused, not slept, and
    # the refusal says how long the chat's slot is booked for.
    env = await make_telegram(group_interval_s=9.0, private_interval_s=4.0, bot_interval_s=0.001)
    await env.adapter.send(group_route(), TEXT)
    with pytest.raises(PacingWait) as group_wait:
        await env.adapter.send(group_route(), TEXT)
    await env.adapter.send(private_route(42), TEXT)
    with pytest.raises(PacingWait) as private_wait:
        await env.adapter.send(private_route(42), TEXT)
    assert 9.0 - 1.0 < group_wait.value.retry_after_s <= 9.0
    assert 4.0 - 1.0 < private_wait.value.retry_after_s <= 4.0
    assert len(env.fake.sent_messages()) == 2  # a refused slot sends nothing


async def test_the_bot_interval_spans_every_chat(make_telegram: MakeEnv) -> None:
    env = await make_telegram(private_interval_s=0.001, bot_interval_s=MAX_PACING_SLEEP_S + 3)
    await env.adapter.send(private_route(42), TEXT)
    with pytest.raises(PacingWait):
        await env.adapter.send(private_route(43), TEXT)  # another chat, the same bot


def test_25_replies_in_one_group_keep_to_the_group_interval(
    fake_telegram: FakeTelegram, make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    interval = 0.25
    grants: list[tuple[str, int]] = []  # (chat id, grant time on Redis's clock, µs)
    paced = outbound.pace

    async def recording(redis: Any, keys: Any, channel: str, chat_id: str, **kwargs: Any) -> int:
        at_us = await paced(redis, keys, channel, chat_id, **kwargs)
        grants.append((chat_id, at_us))
        return at_us

    monkeypatch.setattr(outbound, "pace", recording)
    fake_telegram.add_bot(TOKEN, username="clinic_bot")
    stack = make_stack(channels={"tg": {
        "type": "telegram", "bot": "demo", "token": Secret(TOKEN), "webhook_secret": Secret(SECRET),
        "api_base_url": fake_telegram.url, "group_answer": "all", "group_conversation": "per_speaker",
        # Private chats far quicker: a group paced like a private chat would fail the gaps below.
        "group_interval_s": interval, "private_interval_s": 0.01,
    }})
    for n in range(25):  # 25 people ask at once: 25 conversations, one group chat
        update = message_update(n + 1, chat_id=GROUP, user_id=1000 + n, text=f"q{n}", chat_type="supergroup")
        response = stack.http.post(
            f"{stack.url}/telegram/tg", content=json.dumps(update),
            headers={"content-type": "application/json", "X-Telegram-Bot-Api-Secret-Token": SECRET},
        )
        assert response.status_code == 200

    sent = wait_for(lambda: (s := fake_telegram.sent_messages(GROUP)) and len(s) >= 25 and s,
                    timeout=60, what="25 replies in the group")
    assert sorted(str(c.params["text"]).split(": ", 1)[1] for c in sent) == sorted(f"q{n}" for n in range(25))
    # The grants, on Redis's clock: every two sends to the group at least one interval apart,
    # however late a busy worker came back to its slot (arrival times at the fake add the
    # loopback's and the loaded machine's jitter, which is no property of the pacing).
    times = sorted(at for chat, at in grants if chat == str(GROUP))
    assert len(times) == 25
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= interval * 1_000_000 - 1_000, gaps  # the grant is stamped to the ms
    # At 3 s a group's 20 messages take at least a minute: the per-group limit, scaled.
    assert all(times[i + 19] - times[i] >= 19 * (interval * 1_000_000 - 1_000) for i in range(len(times) - 19))


#: The bot's allowance in any second at the default interval (25).
PER_SECOND = round(1 / BOT_INTERVAL_S)
SECOND_US = 1_000_000


def replica(redis_url: str, chats: range, granted: list[int], *, stalls: int = 0) -> threading.Thread:
    """A worker process: its own event loop and Redis client, one sender per chat, each sending
    once. A sender sent back to the queue (``PacingWait``) comes back when it was told to, as the
    queue would bring it. ``stalls``: times the loop is blocked for 0.3 s while its senders are
    waiting, so that they wake late (a busy process)."""

    async def run() -> None:
        redis = aioredis.Redis.from_url(redis_url)

        async def sender(chat: int) -> None:
            while True:
                try:
                    granted.append(await pace(redis, Keys(), "tg", str(chat)))
                    return
                except PacingWait as wait:
                    await asyncio.sleep(wait.retry_after_s)

        async def busy() -> None:
            for _ in range(stalls):
                await asyncio.sleep(0.2)
                time.sleep(0.3)  # noqa: ASYNC251 - a blocking call on the event loop, as a busy process makes

        try:
            await asyncio.gather(busy(), *(sender(chat) for chat in chats))
        finally:
            await redis.aclose()

    return threading.Thread(target=asyncio.run, args=(run(),))


def test_150_chats_at_once_from_two_replicas_never_exceed_the_bot_rate_in_any_second(redis_url: str) -> None:
    # Before, a slot was booked 40 ms after the last and the sender slept until it: a sender that
    # woke late sent on top of the next second's, and a burst reached 31 in a second at 25.
    granted: list[int] = []
    replicas = [replica(redis_url, range(0, 150, 2), granted, stalls=8), replica(redis_url, range(1, 150, 2), granted)]
    for thread in replicas:
        thread.start()
    for thread in replicas:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in replicas)
    assert len(granted) == 150 and all(isinstance(at, int) for at in granted), granted[:3]
    times = sorted(granted)
    busiest = max(bisect.bisect_left(times, start + SECOND_US) - i for i, start in enumerate(times))
    assert busiest <= PER_SECOND
