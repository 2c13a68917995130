"""Pacing books a slot only for a sender that uses it (issue 8, item 4): concurrent senders on
one key never push each other's slots out, and Telegram's chat and bot keys are booked together
or not at all. Intervals are long (a minute) so that no assertion depends on how fast the
machine is. A Telegram send is granted only when due and while the bot's last second allows it
(issue 19), however many senders come back to their slots at once."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.store.pacing import Clearance, Slot, reserve_slot, take_send, take_slot, take_slots

MINUTE = 60.0


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_a_free_key_is_granted_at_once(redis: aioredis.Redis) -> None:
    assert await take_slot(redis, "pace:a", MINUTE, max_wait_s=0) == Slot(granted=True, wait_s=0.0)


async def test_of_many_concurrent_takers_only_one_books_and_the_next_slot_is_one_interval_out(
    redis: aioredis.Redis,
) -> None:
    slots = await asyncio.gather(*(take_slot(redis, "pace:busy", MINUTE, max_wait_s=0) for _ in range(10)))
    assert sum(slot.granted for slot in slots) == 1
    refused = [slot for slot in slots if not slot.granted]
    # Each refused taker is told when the key frees up: at most one interval away.
    assert all(0 < slot.wait_s <= MINUTE for slot in refused)
    # Nine refusals booked nothing: the next taker willing to wait one interval gets the slot
    # right after the one that was used (reserving on every check would put it 10 minutes out).
    following = await take_slot(redis, "pace:busy", MINUTE, max_wait_s=MINUTE)
    assert following.granted and following.wait_s <= MINUTE


async def test_takers_willing_to_wait_get_consecutive_slots_and_the_rest_book_nothing(redis: aioredis.Redis) -> None:
    slots = await asyncio.gather(*(take_slot(redis, "pace:q", MINUTE, max_wait_s=1.5 * MINUTE) for _ in range(10)))
    granted = sorted(slot.wait_s for slot in slots if slot.granted)
    assert len(granted) == 2 and granted[0] == 0.0 and 0 < granted[1] <= MINUTE
    # Two slots were used, so the third is two intervals out — not ten.
    third = await take_slot(redis, "pace:q", MINUTE, max_wait_s=math.inf)
    assert MINUTE < third.wait_s <= 2 * MINUTE


async def test_telegram_keys_are_booked_both_or_neither(redis: aioredis.Redis) -> None:
    chat, bot = "tg:pace:chat", "tg:pace:bot"
    await reserve_slot(redis, bot, MINUTE)  # the bot-wide key is busy for a minute
    refused = await take_slots(redis, [(chat, 1.0), (bot, MINUTE)], max_wait_s=1.5)
    assert not refused.granted and 0 < refused.wait_s <= MINUTE
    assert await redis.get(chat) is None  # the free chat key was not booked for a send that did not happen
    # And the other way round: a busy chat does not consume the bot-wide slot.
    await redis.delete(bot)
    await reserve_slot(redis, chat, MINUTE)
    refused = await take_slots(redis, [(chat, MINUTE), (bot, 1.0)], max_wait_s=1.5)
    assert not refused.granted and await redis.get(bot) is None


async def test_a_granted_telegram_send_books_both_keys_at_the_same_moment(redis: aioredis.Redis) -> None:
    chat, bot = "tg:pace:chat", "tg:pace:bot"
    await reserve_slot(redis, chat, MINUTE)
    granted = await take_slots(redis, [(chat, MINUTE), (bot, 2 * MINUTE)], max_wait_s=math.inf)
    assert granted.granted and 0 < granted.wait_s <= MINUTE
    chat_next, bot_next = (int(v) for v in await redis.mget([chat, bot]))
    # The send happens at the chat's slot; each key moves one of its own intervals past it.
    assert bot_next - chat_next == int(MINUTE * 1000)


async def test_concurrent_telegram_takers_book_one_send_on_both_keys(redis: aioredis.Redis) -> None:
    pairs = [(f"tg:pace:chat:{n % 3}", 1.0) for n in range(9)]
    slots = await asyncio.gather(
        *(take_slots(redis, [pair, ("tg:pace:bot", MINUTE)], max_wait_s=0) for pair in pairs)
    )
    assert sum(slot.granted for slot in slots) == 1
    # Only the one granted send booked a chat key.
    booked = await redis.mget([f"tg:pace:chat:{n}" for n in range(3)])
    assert sum(value is not None for value in booked) == 1


async def test_taking_no_key_is_a_mistake(redis: aioredis.Redis) -> None:
    with pytest.raises(ValueError):
        await take_slots(redis, [], max_wait_s=1.0)


# -- Telegram: the send is granted when due, within the bot's rate -----------------------------

BOT = ("tg:pace:bot", "tg:pace:sends", 1 / 25)


async def test_a_free_telegram_chat_and_bot_send_at_once_and_the_send_is_stamped(redis: aioredis.Redis) -> None:
    slot = await take_send(redis, chat=("tg:pace:chat:1", 1.0), bot=BOT, max_wait_s=0)
    assert slot.clearance is Clearance.SEND and slot.wait_s == 0.0
    sec, micro = await redis.time()
    assert 0 <= sec * 1_000_000 + micro - slot.at_us < MINUTE * 1_000_000
    assert await redis.lrange("tg:pace:sends", 0, -1) == [str(slot.at_us).encode()]


async def test_senders_back_at_their_slots_at_once_are_granted_no_more_than_a_second_allows(
    redis: aioredis.Redis,
) -> None:
    # Thirty senders whose slots came while their process was busy all ask at the same moment.
    slots = await asyncio.gather(
        *(take_send(redis, chat=(f"tg:pace:chat:{n}", 1.0), bot=BOT, max_wait_s=0, holding=True) for n in range(30))
    )
    sent = [slot for slot in slots if slot.clearance is Clearance.SEND]
    assert len(sent) == 25
    # The other five keep their slots and are told when the oldest of the 25 leaves the second.
    waiting = [slot for slot in slots if slot.clearance is Clearance.WAIT]
    assert len(waiting) == 5 and all(0 < slot.wait_s <= 1.0 for slot in waiting)
    assert await redis.llen("tg:pace:sends") == 25


async def test_a_telegram_sender_is_booked_one_bot_interval_after_the_last(redis: aioredis.Redis) -> None:
    first = await take_send(redis, chat=("tg:pace:chat:1", 1.0), bot=("tg:pace:bot", "tg:pace:sends", MINUTE),
                            max_wait_s=math.inf)
    second = await take_send(redis, chat=("tg:pace:chat:2", 1.0), bot=("tg:pace:bot", "tg:pace:sends", MINUTE),
                             max_wait_s=math.inf)
    assert first.clearance is Clearance.SEND
    # Booked, not sent: it sleeps until its slot and comes back as its holder.
    assert second.clearance is Clearance.WAIT and MINUTE - 1.0 < second.wait_s <= MINUTE
    assert await redis.llen("tg:pace:sends") == 1


async def test_stamps_from_redis_future_are_forgotten_rather_than_holding_the_bot(redis: aioredis.Redis) -> None:
    # Redis's clock went back an hour: the stamps it wrote before would fill "the last second" for an hour.
    sec, _ = await redis.time()
    await redis.lpush("tg:pace:sends", *[f"{sec + 3600}000000"] * 25)
    slot = await take_send(redis, chat=("tg:pace:chat:1", 1.0), bot=BOT, max_wait_s=0)
    assert slot.clearance is Clearance.SEND
