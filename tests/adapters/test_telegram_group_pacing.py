"""Telegram pacing by chat type (docs/PLATFORMS.md §1.5): ~1 message/s in a private chat, at most ~20
a minute in a group, ~30/s for the whole bot, shared by every worker through Redis.

The intervals are configurable, so the end-to-end test shrinks the group interval and checks
the ratio on the times the fake Bot API recorded, not the test's duration.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import pytest

from adapters.telegram.outbound import MAX_PACING_SLEEP_S
from gateway.core.config import Secret
from gateway.core.errors import PacingWait
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
    fake_telegram: FakeTelegram, make_stack: Callable[..., Stack]
) -> None:
    interval = 0.25
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
    times = sorted(c.at for c in sent)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Slots are booked exactly one interval apart on Redis's clock; the fake stamps each send
    # on arrival, a few ms after its slot, so allow that much jitter per gap.
    assert min(gaps) >= interval - 0.05, gaps
    assert (times[-1] - times[0]) / (len(times) - 1) >= interval * 0.95
    # At 3 s a group's 20 messages take at least a minute: the per-group limit, scaled.
    assert all(times[i + 19] - times[i] >= 19 * (interval - 0.05) for i in range(len(times) - 19))
