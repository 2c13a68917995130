"""Fenced writes (``Lease.run``) against a real Redis: all of a write or none of it. An op that
would fail is refused before the first write (Redis does not undo a script's earlier commands),
each refusal is one Redis itself would have failed, and a lost lease still writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.store.lease import Lease, LeaseLost, Op, WriteRefused

LEASE = "test:lease"
WITNESS = Op("HSET", "test:witness", ("field", "value"))  # the write that must not stay behind


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


async def _lease(client: aioredis.Redis) -> Lease:
    lease = await Lease.acquire(client, LEASE, ttl_s=60)
    assert lease is not None
    return lease


async def test_a_write_whose_third_op_would_fail_writes_none_of_the_first_two(client: aioredis.Redis) -> None:
    await client.set("test:text", "not a list")
    lease = await _lease(client)
    await client.pexpire(LEASE, 10_000)  # a refused write must not extend the lease either
    ops = [WITNESS, Op("RPUSH", "test:list", ("item",)), Op("LREM", "test:text", (1, "item"))]
    with pytest.raises(Exception) as refused:
        await lease.run(ops)
    assert await client.exists("test:witness", "test:list") == 0, "ops before the failing one were applied"
    assert await client.get("test:text") == b"not a list"
    assert 0 < await client.pttl(LEASE) <= 10_000
    assert refused.type is WriteRefused
    assert "op 3 (LREM)" in str(refused.value) and "string" in str(refused.value)
    assert not lease.lost


async def test_an_op_with_an_unknown_command_is_refused_before_anything_is_written(client: aioredis.Redis) -> None:
    lease = await _lease(client)
    with pytest.raises(WriteRefused, match=r"op 2 \(SET\)"):
        await lease.run([WITNESS, Op("SET", "test:other", ("value",))])
    assert await client.exists("test:witness", "test:other") == 0


@pytest.mark.parametrize(
    "ops",
    [[WITNESS], [WITNESS, Op("SET", "test:other", ("value",))]],
    ids=["valid ops", "ops that would be refused"],
)
async def test_a_lost_lease_prevents_every_write(client: aioredis.Redis, ops: list[Op]) -> None:
    lease = await _lease(client)
    await client.set(LEASE, "another owner's token", px=60_000)
    with pytest.raises(LeaseLost):
        await lease.run(ops)
    assert lease.lost
    assert await client.exists("test:witness", "test:other") == 0
    assert await client.get(LEASE) == b"another owner's token"


@dataclass(frozen=True)
class Case:
    name: str
    ops: tuple[Op, ...]  # the last one fails in Redis; WITNESS comes first
    setup: Callable[[aioredis.Redis], Awaitable[object]] | None = None


async def _text_field(client: aioredis.Redis) -> object:
    return await client.hset("test:hash", "count", "many")


REFUSED = [
    Case("HINCRBY on a field holding text", (Op("HINCRBY", "test:hash", ("count", 1)),), _text_field),
    Case("HINCRBY on a field an earlier op set to text",
         (Op("HSET", "test:hash", ("count", "many")), Op("HINCRBY", "test:hash", ("count", 1)))),
    Case("a hash command on a key an earlier op made a list",
         (Op("RPUSH", "test:key", ("item",)), Op("HSET", "test:key", ("field", "value")))),
    Case("LINDEX on a hash", (Op("LINDEX", "test:hash", (0,)),), _text_field),
    Case("ZADD with a score that is not a number", (Op("ZADD", "test:zset", ("soon", "member")),)),
    Case("ZADD with a score out of range", (Op("ZADD", "test:zset", ("1e400", "member")),)),
    Case("ZADD with NX and XX", (Op("ZADD", "test:zset", ("NX", "XX", 1, "member")),)),
    Case("ZADD with a score and no member", (Op("ZADD", "test:zset", ("NX", 1)),)),
    Case("HSET with a field and no value", (Op("HSET", "test:hash", ("field",)),)),
    Case("HDEL with no field", (Op("HDEL", "test:hash"),)),
    Case("LREM with a count that is not an integer", (Op("LREM", "test:list", ("1.5", "item")),)),
    Case("EXPIRE with seconds that are not an integer", (Op("EXPIRE", "test:list", ("01",)),)),
    Case("ZREMRANGEBYSCORE with a bound that is not a score", (Op("ZREMRANGEBYSCORE", "test:zset", ("soon", 5)),)),
]


@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.name)
async def test_each_refused_op_is_refused_whole_and_is_one_redis_would_fail(client: aioredis.Redis, case: Case) -> None:
    ops = [WITNESS, *case.ops]
    # Redis itself, one command at a time: every op runs but the last, which fails.
    if case.setup is not None:
        await case.setup(client)
    for op in ops[:-1]:
        await client.execute_command(op.command, op.key, *op.args)
    with pytest.raises(ResponseError):
        await client.execute_command(ops[-1].command, ops[-1].key, *ops[-1].args)

    await client.flushdb()
    if case.setup is not None:
        await case.setup(client)
    before = {key: await client.dump(key) for key in await client.keys("test:*")}
    lease = await _lease(client)
    with pytest.raises(WriteRefused, match=rf"op {len(ops)} \({ops[-1].command}\)"):
        await lease.run(ops)
    after = {key: await client.dump(key) for key in await client.keys("test:*") if key != LEASE.encode()}
    assert after == before


async def test_ops_that_change_a_keys_type_in_order_are_applied_with_their_replies(client: aioredis.Redis) -> None:
    await client.set("test:key", "text")
    await client.hset("test:counts", "seen", 41)
    lease = await _lease(client)
    replies = await lease.run([
        Op("DEL", "test:key"),
        Op("hset", "test:key", ("count", "1")),  # the key is a hash by now; any case is one command
        Op("HINCRBY", "test:key", ("count", 2)),
        Op("HINCRBY", "test:counts", ("seen", 1)),
        Op("ZADD", "test:zset", ("NX", 1.5, "a", "+inf", "b")),
        Op("ZREMRANGEBYSCORE", "test:zset", ("-inf", "(1.5")),
        Op("RPUSH", "test:list", ("x", "y")),
        Op("LREM", "test:list", (1, "x")),
        Op("LINDEX", "test:list", (0,)),
        Op("LINDEX", "test:missing", (0,)),
        Op("EXPIRE", "test:list", (100,)),
    ])
    assert replies == [1, 1, 3, 42, 2, 0, 2, 1, b"y", None, 1]
    assert await client.hgetall("test:key") == {b"count": b"3"}
    assert await client.zrange("test:zset", 0, -1, withscores=True) == [(b"a", 1.5), (b"b", float("inf"))]
