"""The operator's summary of a running gateway, read from Redis (and each channel's platform):
the one function behind both the ``/admin`` console and ``ocs-gateway status``.

Every part is bounded so that the page stays cheap on a busy gateway: turns in flight are read
for the ``SHOW_TURNS`` oldest waiting messages (the waiting index) and at most ``SCAN_TURNS``
most overdue conversations, and the oldest ``SHOW_TURNS`` shown; dead letters are counted, and only the newest few read; each platform gets
``PLATFORM_TIMEOUT_S`` to answer. Nothing here shows a secret or a user's message text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from gateway.core.channel import ChannelAdapter
from gateway.core.keys import as_text
from gateway.core.models import ConversationKey, Inbound
from gateway.ocs.budget import BudgetScope, BudgetUsage, origin_of
from gateway.services import Services
from gateway.store.dead_letters import DeadLetter
from gateway.store.heartbeats import Heartbeat, alive
from gateway.store.reply_delays import DelayStats, read_delays
from gateway.store.traffic import ChannelTraffic, read_traffic
from gateway.store.waiting import oldest_waiting

__all__ = ["ChannelStatus", "Summary", "TurnInFlight", "gather_summary"]

log = logging.getLogger("ocsgw.admin")

#: Conversations of ``active`` read per summary (lowest score, i.e. most overdue, first).
SCAN_TURNS = 500
#: Turns listed, oldest first.
SHOW_TURNS = 50
#: A turn older than this many times its bot's ``task_timeout_s`` is reported stuck.
STUCK_FACTOR = 3.0
#: Newest dead letters listed on the overview.
SHOW_DEAD_LETTERS = 5
#: Busiest OCS sessions listed from the budget (there may be thousands).
SHOW_SESSIONS = 5
PLATFORM_TIMEOUT_S = 5.0
_ERROR_CHARS = 160


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    name: str
    kind: str
    path: str
    bot: str
    traffic: ChannelTraffic
    #: ``ChannelAdapter.status()``: what the platform says (Telegram's webhook, ...).
    platform: Mapping[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return [str(w) for w in self.platform.get("warnings", ())]


@dataclass(frozen=True, slots=True)
class TurnInFlight:
    """One conversation with work: its turn's state and how long its user has waited."""

    conversation: str
    #: The ledger's state, or ``queued`` when no turn has begun.
    state: str
    age_s: float
    attempts: int
    #: A worker holds its lease.
    owned: bool
    #: How late its next step is (0 when not due yet).
    overdue_s: float
    expected_s: float | None
    stuck: bool
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class Summary:
    generated_at: float
    channels: list[ChannelStatus]
    workers: list[Heartbeat]
    turns: list[TurnInFlight]
    #: Every conversation with work (``turns`` lists at most ``SHOW_TURNS`` of them).
    turns_total: int
    #: OCS had the answer → first part out (the ``ocsgw_reply_delay_seconds`` measure), per window.
    delays: list[DelayStats]
    #: The user's message in → first part out, OCS included, per window.
    waits: list[DelayStats]
    budget: list[BudgetUsage]
    #: Sessions with a budget bucket open (only the busiest are in ``budget``).
    budget_sessions: int
    dead_letters_total: int
    dead_letters: list[DeadLetter]
    #: Bot names per OCS origin / start channel, to read budget rows per bot.
    budget_bots: dict[str, list[str]]

    @property
    def stuck(self) -> list[TurnInFlight]:
        return [t for t in self.turns if t.stuck]

    @property
    def workers_alive(self) -> list[Heartbeat]:
        """Beating and sweeping (as ``ocsgw_workers_alive`` counts them)."""
        return [w for w in self.workers if w.state(self.generated_at) == "alive"]

    @property
    def workers_stale(self) -> list[Heartbeat]:
        """Beating, but their housekeeping (the sweep) stopped."""
        return [w for w in self.workers if w.state(self.generated_at) == "stale"]

    def problems(self) -> list[str]:
        """What an operator should look at first, one line each."""
        found: list[str] = []
        if not self.workers_alive and not self.workers_stale:
            found.append("no worker is alive: nothing is being answered")
        stale = len(self.workers_stale)
        dead = len(self.workers) - len(self.workers_alive) - stale
        if dead and self.workers_alive:
            found.append(f"{dead} worker(s) stopped beating")
        if stale:
            found.append(f"{stale} worker(s) beating but not sweeping: restart them")
        if self.stuck:
            found.append(f"{len(self.stuck)} turn(s) stuck")
        if self.dead_letters_total:
            found.append(f"{self.dead_letters_total} dead letter(s)")
        found.extend(f"channel {c.name}: {w}" for c in self.channels for w in c.warnings)
        found.extend(
            f"OCS {row.scope} {row.name} blocked for {row.blocked_for_s:.0f} s ({row.reason})"
            for row in self.budget if row.blocked_for_s > 0
        )
        return found


async def gather_summary(services: Services, *, platforms: bool = True) -> Summary:
    """Read the whole summary. ``platforms=False`` skips the calls to the platforms' APIs.

    Raises:
        RedisError: Redis is unreachable (the console answers 503).
    """
    config, redis, keys = services.config, services.redis, services.keys
    seconds, micros = await redis.time()
    now = int(seconds) + int(micros) / 1e6
    statuses = await _platform_statuses(services.adapters) if platforms else {}
    traffic = await read_traffic(redis, keys, config.channels, now=now)
    channels = []
    for name, adapter in services.adapters.items():
        facts = adapter.describe()
        channels.append(ChannelStatus(
            name, str(facts.get("kind", adapter.kind)), str(facts.get("path", "")), config.channels[name].bot,
            traffic[name], statuses.get(name, {}),
        ))
    workers = await alive(redis, keys, now=now)
    turns, total = await _turns(services, now)
    series = await read_delays(redis, keys, now=now)
    usage = await services.budget.usage()
    sessions = [row for row in usage if row.scope is BudgetScope.SESSION]
    busiest = sorted(sessions, key=lambda row: (-row.used, row.name))[:SHOW_SESSIONS]
    budget = [row for row in usage if row.scope is not BudgetScope.SESSION] + busiest
    letters = await services.dead_letters.list(limit=SHOW_DEAD_LETTERS)
    letters_total = int(await redis.zcard(keys.dlq))
    return Summary(
        generated_at=now, channels=channels, workers=workers, turns=turns, turns_total=total,
        delays=series["reply"], waits=series["wait"],
        budget=budget, budget_sessions=len(sessions), dead_letters_total=letters_total, dead_letters=list(letters),
        budget_bots=_budget_bots(services),
    )


async def _platform_statuses(adapters: Mapping[str, ChannelAdapter[Any]]) -> dict[str, Mapping[str, Any]]:
    async def one(adapter: ChannelAdapter[Any]) -> Mapping[str, Any]:
        try:
            return await asyncio.wait_for(adapter.status(), PLATFORM_TIMEOUT_S)
        except TimeoutError:
            return {"warnings": [f"the platform did not answer within {PLATFORM_TIMEOUT_S:.0f} s"]}
        except Exception as exc:  # noqa: BLE001 - one platform's trouble must not hide the page
            log.warning("status of channel %s failed: %s", adapter.name, type(exc).__name__)
            return {"warnings": [f"status unavailable ({type(exc).__name__})"]}

    names = list(adapters)
    results = await asyncio.gather(*(one(adapters[name]) for name in names))
    return dict(zip(names, results))


async def _turns(services: Services, now: float) -> tuple[list[TurnInFlight], int]:
    redis, keys, config = services.redis, services.keys, services.config
    total = int(await redis.zcard(keys.active))
    # Candidates: the oldest waiting messages (the waiting index, exact however many are in
    # flight, so a stuck turn is listed first whatever the number), and the most overdue of
    # ``active`` (an unowned conversation no sweeper takes is stuck whatever its age).
    oldest = await oldest_waiting(redis, keys, limit=SHOW_TURNS)
    # withscores=True replies (member, score) pairs; redis-py's overloads do not narrow to them.
    overdue_rows = cast("list[tuple[bytes, float]]", await redis.zrange(keys.active, 0, SCAN_TURNS - 1, withscores=True))
    candidates = list(dict.fromkeys([str(w.conversation) for w in oldest] + [as_text(m) for m, _ in overdue_rows]))
    convs: list[tuple[str, ConversationKey]] = []
    for conv_text in candidates:
        try:
            convs.append((conv_text, ConversationKey.parse(conv_text)))
        except ValueError:
            continue  # not a conversation of ours
    if not convs:
        return [], total
    async with redis.pipeline(transaction=False) as pipe:
        for _, conv in convs:
            pipe.hmget(keys.turn(conv), ["state", "attempts", "last_error"])
            pipe.exists(keys.lease(conv))
            pipe.zscore(keys.active, str(conv))
            pipe.zscore(keys.waiting, str(conv))
        replies = await pipe.execute()
    rows = [replies[4 * i : 4 * i + 4] for i in range(len(convs))]
    # The index misses a conversation only briefly (between a turn's end and the next one's
    # start, or state written by hand): read those heads' times from the items themselves.
    unindexed = [i for i, row in enumerate(rows) if row[3] is None]
    fallback: dict[int, float | None] = {}
    if unindexed:
        async with redis.pipeline(transaction=False) as pipe:
            for i in unindexed:
                conv = convs[i][1]
                pipe.hget(keys.turn(conv), "inbound_raw")
                pipe.lindex(keys.inbox(conv), 0)
            raws = await pipe.execute()
        for j, i in enumerate(unindexed):
            raw = raws[2 * j] or raws[2 * j + 1]
            fallback[i] = _received_at(raw) if raw is not None else None
    tuning = config.worker
    # Unowned and this late: the sweeper should have adopted it by now, so no worker is taking it.
    abandoned_after_s = tuning.stall_grace_s + 2 * tuning.sweep_interval_s
    turns: list[TurnInFlight] = []
    for i, (conv_text, _) in enumerate(convs):
        (state, attempts, last_error), owned, due_at, waiting_since = rows[i]
        received_at = float(waiting_since) if waiting_since is not None else fallback.get(i)
        age = max(0.0, now - received_at) if received_at else 0.0
        channel = conv_text.partition("/")[0]
        channel_config = config.channels.get(channel)
        expected = config.bots[channel_config.bot].task_timeout_s if channel_config is not None else None
        overdue = max(0.0, now - float(due_at)) if due_at is not None else 0.0
        stuck = (expected is not None and age > STUCK_FACTOR * expected) or (
            not owned and overdue > abandoned_after_s
        )
        turns.append(TurnInFlight(
            conversation=conv_text, state=as_text(state) if state else "queued", age_s=age,
            attempts=int(attempts or 0), owned=bool(owned), overdue_s=overdue, expected_s=expected, stuck=stuck,
            last_error=as_text(last_error)[:_ERROR_CHARS] if last_error else "",
        ))
    turns.sort(key=lambda t: (-t.age_s, t.conversation))
    return turns[:SHOW_TURNS], total


def _received_at(raw: bytes | str) -> float | None:
    try:
        return Inbound.from_json(as_text(raw)).received_at or None
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable item: the worker dead-letters it; its age is unknown


def _budget_bots(services: Services) -> dict[str, list[str]]:
    """Which bots spend each origin's and each start channel's budget."""
    config = services.config
    bots: dict[str, list[str]] = {}
    for name, bot in config.bots.items():
        bots.setdefault(origin_of(bot.base_url), []).append(name)
    for name, channel in config.channels.items():
        bots.setdefault(name, []).append(channel.bot)
    return bots

