"""The dead-letter store (issue 8, item 4): a letter keeps the stage it failed at and the answer
it could not deliver, a replay of a delivery failure re-delivers that answer without a new OCS
message, every letter is listed exactly once however it is paged and filtered, and letters
expire after the retention. ``ocs-gateway dlq`` pages through the same store."""

from __future__ import annotations

import asyncio
import json
import shlex
import time
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway import cli
from gateway.core.keys import Keys
from gateway.core.models import (
    ConversationKey,
    Inbound,
    InboundKind,
    Outgoing,
    Reply,
    ReplyAttachment,
)
from gateway.store import dead_letters
from gateway.store.dead_letters import DeadLetterStage, DeadLetterStore, since_from_text
from tests.conftest import Stack, wait_for

KEYS = Keys()
ROUTE = {"chat_id": "-100123", "message_thread_id": "7", "reply_to": "55"}
ATTACHMENT = ReplyAttachment(name="plan.pdf", content_type="application/pdf", size=2048,
                             content_url="https://ocs.example/files/9/content")


def inbound(channel: str = "tg", conversation: str = "chat:-100123:7", text: str = "when do you open?") -> Inbound:
    return Inbound(key=ConversationKey(channel, conversation), event_id=f"ev-{conversation}-{text}",
                   kind=InboundKind.MESSAGE, sender_id="u1", text=text, route=ROUTE, received_at=1.0)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: aioredis.Redis) -> DeadLetterStore:
    return DeadLetterStore(redis, KEYS)


class SteppingClock:
    """``time.time`` for the store that gives the same instant to ``per_tick`` calls in a row,
    so that many letters share a parked_at (ties the pager must still order exactly)."""

    def __init__(self, start: float, *, per_tick: int) -> None:
        self.start, self.per_tick, self.calls = start, per_tick, 0

    def time(self) -> float:
        self.calls += 1
        return self.start + (self.calls // self.per_tick) * 0.25


async def park(store: DeadLetterStore, item: Inbound, *, stage: DeadLetterStage = DeadLetterStage.OCS, error: str = "OCSUnavailable: 503") -> str:
    letter = await store.park(item.key, item.to_json(), error=error, stage=stage, ocs={"session_id": "s1"},
                              ledger={"turn": "t1", "state": "sent"})
    return letter.id


# -- what a letter keeps ---------------------------------------------------------------------------


async def test_a_delivery_letter_keeps_its_stage_reply_and_rendered_parts(store: DeadLetterStore) -> None:
    item = inbound()
    reply = Reply(text="We open at **9**.", attachments=(ATTACHMENT,), in_reply_to=item.event_id)
    parts = (Outgoing(text="We open at <b>9</b>.", plain="We open at 9.", hints={"parse_mode": "HTML"}),
             Outgoing(attachment=ATTACHMENT))
    parked = await store.park(item.key, item.to_json(), error="RetryLater: telegram unreachable", stage=DeadLetterStage.DELIVERY,
                              ocs={"session_id": "s1", "task_id": "k1"},
                              ledger={"turn": "t1", "state": "delivering", "delivered": 0}, reply=reply, parts=parts)
    (listed,) = await store.list()
    for letter in (await store.get(parked.id), listed):
        assert letter is not None
        assert (letter.stage, letter.reply, letter.parts) == (DeadLetterStage.DELIVERY, reply, parts)
        assert letter.channel == "tg" and letter.ledger["state"] == "delivering"
        assert letter.ocs == {"session_id": "s1", "task_id": "k1"}
        assert Inbound.from_json(letter.inbound) == item


async def test_a_letter_parked_before_stages_existed_still_reads_and_replays_its_inbound(
    store: DeadLetterStore, redis: aioredis.Redis
) -> None:
    item = inbound()
    old = {"id": "0123456789ab", "conversation": str(item.key), "inbound": item.to_json(), "error": "x",
           "ocs": {}, "ledger": {}, "parked_at": time.time()}
    await redis.set(KEYS.dead_letter("0123456789ab"), json.dumps(old))
    await redis.zadd(KEYS.dlq, {"0123456789ab": old["parked_at"]})
    (letter,) = await store.list()
    assert (letter.stage, letter.reply, letter.parts) == (DeadLetterStage.UNKNOWN, None, ())
    assert await store.replay(letter.id) == item.key
    assert [Inbound.from_json(raw) for raw in await redis.lrange(KEYS.inbox(item.key), 0, -1)] == [item]


async def test_a_letter_with_a_stage_this_version_does_not_know_lists_counts_and_replays_its_inbound(
    store: DeadLetterStore, redis: aioredis.Redis
) -> None:
    # A newer version may park with a stage this one has never heard of: it reads as UNKNOWN,
    # and what Redis holds keeps the stage it was written with.
    item, parked_at = inbound(), time.time()
    newer = {"id": "ba9876543210", "conversation": str(item.key), "inbound": item.to_json(), "error": "x",
             "ocs": {}, "ledger": {}, "parked_at": parked_at, "stage": "attachments", "reply": None, "parts": []}
    await redis.set(KEYS.dead_letter("ba9876543210"), json.dumps(newer))
    await redis.zadd(KEYS.dlq, {"ba9876543210": parked_at})
    (letter,) = await store.list()
    assert letter.stage is DeadLetterStage.UNKNOWN
    assert await store.count() == {("tg", DeadLetterStage.UNKNOWN): 1}
    assert json.loads(await redis.get(KEYS.dead_letter(letter.id)) or b"{}")["stage"] == "attachments"
    assert await store.replay(letter.id) == item.key
    assert [Inbound.from_json(raw) for raw in await redis.lrange(KEYS.inbox(item.key), 0, -1)] == [item]


@pytest.mark.parametrize("stage", list(DeadLetterStage), ids=str)
async def test_a_letter_stores_its_stage_by_the_name_earlier_versions_wrote(
    store: DeadLetterStore, redis: aioredis.Redis, stage: DeadLetterStage
) -> None:
    names = {DeadLetterStage.OCS: "ocs", DeadLetterStage.DELIVERY: "delivery", DeadLetterStage.CONFIG: "config",
             DeadLetterStage.UNREADABLE: "unreadable", DeadLetterStage.UNKNOWN: "unknown"}
    letter_id = await park(store, inbound(), stage=stage)
    assert json.loads(await redis.get(KEYS.dead_letter(letter_id)) or b"{}")["stage"] == names[stage]
    fetched = await store.get(letter_id)
    assert fetched is not None and fetched.stage is stage


# -- replay -----------------------------------------------------------------------------------------


async def test_replaying_a_delivery_failure_queues_the_answer_as_a_push_not_the_users_message(
    store: DeadLetterStore, redis: aioredis.Redis
) -> None:
    item = inbound()
    reply = Reply(text="We open at 9.", attachments=(ATTACHMENT,), in_reply_to=item.event_id)
    parked = await store.park(item.key, item.to_json(), error="gave up", stage=DeadLetterStage.DELIVERY, ocs={}, ledger={},
                              reply=reply, parts=[Outgoing(text="We open at 9.")])
    assert await store.replay(parked.id) == item.key
    (raw,) = await redis.lrange(KEYS.inbox(item.key), 0, -1)
    queued = Inbound.from_json(raw)
    assert queued.kind is InboundKind.PUSH and queued.key == item.key
    assert queued.text == "We open at 9." and queued.text != item.text
    assert queued.context["attachments"] == [{"name": "plan.pdf", "content_type": "application/pdf", "size": 2048,
                                              "content_url": "https://ocs.example/files/9/content"}]
    assert [Outgoing.from_dict(part) for part in queued.context["parts"]] == [Outgoing(text="We open at 9.")]
    assert queued.route == ROUTE  # the same chat, topic and message it answers
    assert await redis.zscore(KEYS.active, str(item.key)) is not None
    assert await store.get(parked.id) is None and await store.list() == []


async def test_replaying_an_ocs_failure_queues_the_original_message_again(
    store: DeadLetterStore, redis: aioredis.Redis
) -> None:
    item = inbound()
    letter_id = await park(store, item, stage=DeadLetterStage.OCS)
    assert await store.replay(letter_id) == item.key
    assert await redis.lrange(KEYS.inbox(item.key), 0, -1) == [item.to_json().encode()]
    assert await store.replay(letter_id) is None  # replayed once only


async def test_two_replays_at_once_queue_the_letter_once(redis_url: str, redis: aioredis.Redis) -> None:
    # Two web replicas (or a double click) replay one letter: both read it before either writes.
    item = inbound()
    letter_id = await park(DeadLetterStore(redis, KEYS), item, stage=DeadLetterStage.OCS)
    both_read = asyncio.Barrier(2)
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    stores = [DeadLetterStore(client, KEYS) for client in clients]
    for replica in stores:
        read = replica.get

        async def get_then_wait(letter: str, read=read) -> object:  # type: ignore[no-untyped-def]
            found = await read(letter)
            await both_read.wait()
            return found

        replica.get = get_then_wait  # type: ignore[method-assign]
    try:
        outcomes = await asyncio.gather(*(replica.replay(letter_id) for replica in stores))
    finally:
        for client in clients:
            await client.aclose()
    assert sorted(outcomes, key=str) == sorted([item.key, None], key=str)
    assert await redis.lrange(KEYS.inbox(item.key), 0, -1) == [item.to_json().encode()]


async def test_replaying_an_unreadable_item_is_refused_and_keeps_the_letter(store: DeadLetterStore) -> None:
    parked = await store.park(ConversationKey("tg", "x"), "{not json", error="unreadable", stage=DeadLetterStage.UNREADABLE,
                              ocs={}, ledger={})
    with pytest.raises(ValueError, match="drop it"):
        await store.replay(parked.id)
    assert await store.get(parked.id) is not None


# -- paging -----------------------------------------------------------------------------------------


async def test_paging_with_filters_lists_every_letter_exactly_once(
    store: DeadLetterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SteppingClock(1_800_000_000.0, per_tick=7)  # groups of 7 letters share one instant
    monkeypatch.setattr(dead_letters, "time", types.SimpleNamespace(time=clock.time))
    parked: dict[str, tuple[str, float]] = {}
    for n in range(150):
        channel = ("tg", "slack", "hooks")[n % 3]
        letter = await store.park(inbound(channel, f"c{n}").key, inbound(channel, f"c{n}").to_json(), error="e",
                                  stage=DeadLetterStage.OCS, ocs={}, ledger={})
        parked[letter.id] = (channel, letter.parked_at)
    since = 1_800_000_000.0 + 5.0  # the newer ~130 letters

    async def every_page(limit: int, *, meddle: bool = False, **filters: object) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            page = await store.list(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
            assert len(page) <= limit
            seen += [letter.id for letter in page]
            if page.next_cursor is None:
                return seen
            cursor = page.next_cursor
            if meddle:
                # Letters parked and dropped between pages neither shift nor repeat the rest.
                late = await store.park(inbound("tg", "late").key, inbound("tg", "late").to_json(), error="e",
                                        ocs={}, ledger={})
                parked[late.id] = ("tg", late.parked_at)
                await store.drop(seen[-1])
                gone.add(seen[-1])

    gone: set[str] = set()
    before = set(parked)
    everything = await every_page(10, meddle=True)
    assert len(everything) == len(set(everything)) and set(everything) == before
    assert [parked[i][1] for i in everything] == sorted((parked[i][1] for i in everything), reverse=True)

    tg_recent = await every_page(9, channel="tg", since=since)
    expected = {i for i, (channel, at) in parked.items() if channel == "tg" and at >= since and i not in gone}
    assert len(tg_recent) == len(set(tg_recent)) and set(tg_recent) == expected and len(expected) > 9


async def test_a_page_of_the_last_letters_has_no_next_cursor(store: DeadLetterStore) -> None:
    for n in range(3):
        await park(store, inbound(conversation=f"c{n}"))
    page = await store.list(limit=3)
    assert len(page) == 3 and page.next_cursor is None
    with pytest.raises(ValueError):
        await store.list(cursor="not-a-cursor")


async def test_count_is_per_channel_and_stage(store: DeadLetterStore) -> None:
    await park(store, inbound("tg", "a"), stage=DeadLetterStage.OCS)
    await park(store, inbound("tg", "b"), stage=DeadLetterStage.DELIVERY)
    await park(store, inbound("tg", "c"), stage=DeadLetterStage.DELIVERY)
    await park(store, inbound("slack", "d"), stage=DeadLetterStage.CONFIG)
    assert await store.count() == {("tg", "ocs"): 1, ("tg", "delivery"): 2, ("slack", "config"): 1}


# -- retention --------------------------------------------------------------------------------------


async def test_a_letter_carries_the_retention_as_its_ttl(store: DeadLetterStore, redis: aioredis.Redis) -> None:
    letter_id = await park(store, inbound())
    ttl_ms = await redis.pttl(KEYS.dead_letter(letter_id))
    assert 13 * 86_400_000 < ttl_ms <= 14 * 86_400_000


async def test_letters_expire_after_the_retention_and_leave_the_index(redis: aioredis.Redis) -> None:
    short = DeadLetterStore(redis, KEYS, retention_days=0.3 / 86_400)  # 0.3 s
    for n in range(3):
        await park(short, inbound(conversation=f"c{n}"))
    assert len(await short.list()) == 3
    deadline = time.monotonic() + 10
    while await short.list():  # until Redis has expired them
        assert time.monotonic() < deadline, "letters never expired"
        await asyncio.sleep(0.05)
    assert await redis.zcard(KEYS.dlq) == 0  # listing pruned the index of the expired ids
    assert await redis.keys(KEYS.dead_letter("*")) == []


async def test_parking_prunes_ids_older_than_the_retention(
    store: DeadLetterStore, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = time.time()
    monkeypatch.setattr(dead_letters, "time", types.SimpleNamespace(time=lambda: real - 15 * 86_400))
    stale = await park(store, inbound(conversation="old"))
    monkeypatch.setattr(dead_letters, "time", types.SimpleNamespace(time=lambda: real))
    fresh = await park(store, inbound(conversation="new"))
    assert [m.decode() for m in await redis.zrange(KEYS.dlq, 0, -1)] == [fresh]
    assert stale != fresh


# -- --since ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h", 1_800_000_000.0 - 3600),
        ("2d", 1_800_000_000.0 - 2 * 86_400),
        ("90m", 1_800_000_000.0 - 5400),
        ("2026-11-01", 1_793_491_200.0),
        ("2026-11-01T08:30", 1_793_521_800.0),
        ("2026-11-01T08:30+01:00", 1_793_518_200.0),
        ("1793491200.25", 1_793_491_200.25),
    ],
)
def test_since_takes_spans_dates_and_unix_seconds(text: str, expected: float) -> None:
    assert since_from_text(text, now=1_800_000_000.0) == expected


def test_since_refuses_anything_else() -> None:
    with pytest.raises(ValueError):
        since_from_text("yesterday", now=0.0)


# -- the CLI ----------------------------------------------------------------------------------------


def _config_file(tmp_path: Path, redis_url: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"redis_url: {redis_url}\n")
    return str(path)


def _park_many(redis_url: str, count: int, channel_of: Callable[[int], str]) -> set[str]:
    async def run() -> set[str]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            store = DeadLetterStore(client, KEYS)
            return {await park(store, inbound(channel_of(n), f"c{n}")) for n in range(count)}
        finally:
            await client.aclose()

    return asyncio.run(run())


def _ids(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_dlq_list_pages_through_every_letter_with_the_printed_command(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parked = _park_many(redis_url, 120, lambda n: "tg" if n % 4 else "slack")
    config = _config_file(tmp_path, redis_url)
    seen: list[str] = []
    argv = ["dlq", "list", "--limit", "50"]
    while True:
        assert cli.main(["--config", config, *argv]) == 0
        out, err = capsys.readouterr()
        page = _ids(out)
        assert 0 < len(page) <= 50
        seen += page
        if not err.strip():
            break
        (more,) = [line for line in err.splitlines() if line.startswith("more: ")]
        argv = shlex.split(more.removeprefix("more: "))[1:]  # drop "ocs-gateway"
    assert len(seen) == 120 and set(seen) == parked

    assert cli.main(["--config", config, "dlq", "list", "--all", "--limit", "7", "--channel", "slack"]) == 0
    out, err = capsys.readouterr()
    assert len(_ids(out)) == 30 and len(set(_ids(out))) == 30 and "more:" not in err

    assert cli.main(["--config", config, "dlq", "list", "--all", "--since", "1h"]) == 0
    assert set(_ids(capsys.readouterr().out)) == parked
    assert cli.main(["--config", config, "dlq", "list", "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out == ""


def test_dlq_count_and_bad_arguments(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _park_many(redis_url, 5, lambda n: "tg" if n % 2 else "slack")
    config = _config_file(tmp_path, redis_url)
    assert cli.main(["--config", config, "dlq", "count"]) == 0
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == [["3", "slack", "ocs"], ["2", "tg", "ocs"]]
    assert cli.main(["--config", config, "dlq", "list", "--since", "last tuesday"]) == 2
    assert cli.main(["--config", config, "dlq", "list", "--cursor", "nonsense"]) == 2
    assert cli.main(["--config", config, "dlq", "list", "--limit", "0"]) == 2


def test_replaying_a_failed_delivery_end_to_end_sends_no_second_ocs_message(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack.receiver.fail_with = [400]  # the callback refuses the answer once: a delivery failure
    stack.say("c1", "hello")
    wait_for(lambda: stack.redis.zcard(KEYS.dlq), what="the delivery in the dead-letter store")
    (letter_id,) = [m.decode() for m in stack.redis.zrange(KEYS.dlq, 0, -1)]
    letter = dead_letters.DeadLetter.from_json(stack.redis.get(KEYS.dead_letter(letter_id)) or b"")
    assert letter.stage == "delivery" and letter.reply is not None and letter.reply.text == "Echo #1: hello"
    assert letter.parts and stack.receiver.texts("c1") == []

    assert cli.main(["--config", _config_file(tmp_path, stack.redis_url), "dlq", "replay", letter_id]) == 0
    assert f"replayed {letter_id}" in capsys.readouterr().out
    assert wait_for(lambda: stack.receiver.texts("c1"), what="the replayed answer") == ["Echo #1: hello"]
    (session,) = stack.sim.state.list_sessions()
    assert stack.sim.state.user_messages(session.id) == ["hello"]  # OCS was not asked again
    assert stack.redis.zcard(KEYS.dlq) == 0


def test_a_replayed_delivery_resumes_the_part_numbering_and_ids_of_the_original(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Part 1 of 2 is delivered, the callback refuses part 2 for good: the replay sends that
    part as "2 of 2" under the id the first delivery gave it, so the receiver can tell a repeat."""
    stack.sim.state.knobs.reply_attachments = True  # the answer: its text, then a file
    stack.receiver.fail_parts = {2: [400]}
    stack.say("c1", "hello")
    wait_for(lambda: stack.redis.zcard(KEYS.dlq), what="the refused part in the dead-letter store")
    (letter_id,) = [m.decode() for m in stack.redis.zrange(KEYS.dlq, 0, -1)]
    first = [(m["part"], m["parts"]) for m in stack.receiver.received]
    assert first == [(1, 2)]
    refused_id = stack.receiver.attempt_ids[-1]

    assert cli.main(["--config", _config_file(tmp_path, stack.redis_url), "dlq", "replay", letter_id]) == 0
    wait_for(lambda: len(stack.receiver.received) == 2, what="the replayed part")
    assert [(m["part"], m["parts"]) for m in stack.receiver.received] == [(1, 2), (2, 2)]
    assert stack.receiver.webhook_ids[-1] == refused_id  # the same part, the same webhook-id
    assert stack.receiver.received[-1]["attachments"]
