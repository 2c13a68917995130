"""The turn runner: one event loop per worker process that owns conversations and drives their
turns, so a turn waiting on OCS holds neither a thread nor a queued message.

Who owns what:

* **Redis** holds the truth: each conversation's inbox, its turn ledger, and ``active`` (a
  sorted set of conversations with work, scored by when someone must look at them next).
* **Dramatiq** carries the edge's wake-ups to some worker process (``advance_conversation``);
  its actor only hands the conversation to this runner and returns at once.
* **The runner** takes a conversation's lease and keeps it, renewing all its leases in one round
  trip every third of the TTL, while one coroutine per conversation steps the turn engine and
  sleeps on the loop's timer heap between polls. A priority gate (``StepGate``) bounds the steps
  running at once, turns a user waits on first; ``max_in_flight`` bounds the conversations owned.
* **The sweeper** (every ``sweep_interval_s``) adopts conversations that are overdue and have no
  owner — a killed process's, or ones whose wake-up was lost — and starts the bot-initiated
  message polls that are due. Renewal keeps owned conversations' scores in the future, so the
  sweeper never touches a conversation a live process holds.
* **The heartbeat** (every ``heartbeat_interval_s``) tells ``gateway/store/heartbeats.py`` who
  this worker is, what it holds and when its last sweep completed; a clean stop removes it.

Each of these background loops (renew, sweep, watch start, heartbeat) survives whatever one tick
raises: it is logged, counted in ``ocsgw_housekeeping_errors_total{task}``, and the next tick runs.
That includes a ``CancelledError`` a callee let out which was not the loop's own cancellation. A
loop that still ends before the stop is logged as an error and stops the runner: a process that
no longer renews or sweeps must be restarted, not look healthy (``workers/lifecycle.py``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import Future
from typing import Any

from redis.exceptions import RedisError

from gateway.core.config import WorkerTuning
from gateway.core.logs import bind, conversation_label
from gateway.core.models import ConversationKey
from gateway.core.queue import QUEUE
from gateway.core.version import VERSION
from gateway.store import heartbeats
from gateway.store.clock import RedisClock
from gateway.store.lease import Lease, LeaseLost, renew_leases
from gateway.store.ledger import TurnState
from gateway.store.lua import LuaScript
from workers.context import WorkerServices
from workers.hold import Hold, PostedPart
from workers.turns import TurnEngine
from workers.watch import SessionWatcher

__all__ = ["StepGate", "TurnRunner", "fair_share"]

log = logging.getLogger("ocsgw.runner")

#: Renewal round trips are batched at most this many leases at a time.
_RENEW_BATCH = 1000
#: After a Redis error the driving coroutine waits this long before trying again.
_REDIS_RETRY_S = 1.0
#: Conversations adopted per sweep, at most.
_ADOPT_PER_SWEEP = 500
#: How long a posted part whose mark may be missing is remembered once its hold ended.
_POSTED_KEEP_S = 600.0
#: ``offer`` waits this much longer than its own timeout for the loop to answer at all.
_OFFER_GRACE_S = 5.0

_SWEEP = LuaScript("""
local overdue = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local polls = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, ARGV[4])
local total = redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[1])
return {overdue, polls, total}
""")


class StepGate:
    """At most ``limit`` steps at once, and when steps queue, those of turns a user is already
    waiting on (sent, delivering) go before new turns. Under a burst, first come first served
    would start every new turn before any answer that is ready goes out."""

    URGENT = 0
    NEW = 1

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (priority, next(self._order), future)
        heapq.heappush(self._waiting, entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted and cancelled at once: pass the step on
            else:
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
            raise

    def release(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1

    @contextlib.asynccontextmanager
    async def step(self, priority: int) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()


class TurnRunner:
    """Parameters:
    services: the process's services (opened on this runner's loop).
    tuning: the worker settings.
    """

    def __init__(self, services: WorkerServices, tuning: WorkerTuning) -> None:
        self.services = services
        self.tuning = tuning
        self.clock = RedisClock(services.redis)
        self.engine = TurnEngine(services, tuning, self.clock)
        self.watcher = SessionWatcher(services, tuning, self.clock)
        self._holds: dict[str, Hold] = {}
        self._pokes: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._steps = StepGate(tuning.max_concurrent_steps)
        #: Hand-overs waiting for room, first come first served (see ``claim``).
        self._room: collections.deque[asyncio.Future[None]] = collections.deque()
        #: Set by ``close``: no conversation is taken any more (the stop has begun).
        self._closed = False
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: This process in the heartbeats (host:pid:random, so a restarted pid is a new worker).
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: Redis time of the start (set again once the clock is synced).
        self.started_at = time.time()
        #: Redis time of the last completed sweep, None before the first: the heartbeat says
        #: from it whether housekeeping is running, to readers on other hosts.
        self.housekeeping_at: float | None = None
        #: ``time.monotonic()`` of the start, the last completed sweep and the last completed
        #: lease renewal: this process's /readyz judges its own housekeeping on them, immune to
        #: wall-clock steps.
        self.started_mono = time.monotonic()
        self.swept_mono: float | None = None
        self.renewed_mono: float | None = None
        #: Why the runner stopped on its own (a housekeeping loop ended), None otherwise.
        self.failure: str | None = None
        #: Set once the housekeeping loops run (``serve``'s first steps done).
        self.serving = False
        #: Live workers (this one included) as the last heartbeat read them: the sweep's divisor.
        self._peers = 1
        #: Parts this process posted whose delivery mark Redis may lack, by conversation, kept
        #: between two holds of it (a Redis outage outlasting the lease ends a hold), with when
        #: they were posted (``time.monotonic()``): the next hold here does not post them again.
        self._posted: dict[str, tuple[PostedPart, float]] = {}
        #: After a Redis outage this process saw, the sweep adopts only the conversations it has
        #: parts of in ``_posted`` until then (monotonic): every process's leases lapsed together,
        #: and the one that posted a part must be the one to adopt it, or another posts it again.
        self._sweep_failed = False
        self._defer_until = 0.0
        services.reachability.on_answer(self._wake)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the runner serves on (None before ``serve``)."""
        return self._loop

    # -- life -------------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then give every held conversation back."""
        self._loop = asyncio.get_running_loop()
        await self._until_redis(self.clock.sync)
        self.started_at = self.clock.now()
        self.started_mono = time.monotonic()
        loops = [
            asyncio.create_task(self._housekeeping("renew", self.tuning.lease_ttl_s / 3, self._renew), name="ocsgw-renew"),
            asyncio.create_task(self._housekeeping("sweep", self.tuning.sweep_interval_s, self._sweep_tick), name="ocsgw-sweep"),
            asyncio.create_task(
                self._housekeeping("probe", min(self.tuning.ocs_probe_interval_s, 1.0), self._probe_tick), name="ocsgw-probe"
            ),
            asyncio.create_task(
                self._housekeeping("heartbeat", self.tuning.heartbeat_interval_s, self.beat, at_once=True),
                name="ocsgw-heartbeat",
            ),
        ]
        for task in loops:
            task.add_done_callback(lambda done: self._loop_ended(done, stop))
        self.serving = True
        try:
            await stop.wait()
        finally:
            self._stopping = True
            self.close()
            for task in loops:
                task.cancel()
            # Settled before the forget, so no beat in flight lands after it.
            await asyncio.gather(*loops, return_exceptions=True)
            await self._hand_back()
            await self._forget()

    def _loop_ended(self, task: asyncio.Task[Any], stop: asyncio.Event) -> None:
        """A housekeeping loop only ends when stopped; one that ends before leaves leases to
        lapse or conversations unadopted while the process looks alive, so the runner stops and
        its process exits for its supervisor to restart it."""
        if self._stopping:
            return
        reason = "cancelled" if task.cancelled() else repr(task.exception()) if task.exception() else "returned"
        self.failure = f"housekeeping loop {task.get_name()} ended ({reason})"
        log.error("%s before the stop: stopping the turn runner", self.failure, exc_info=None if task.cancelled() else task.exception())
        stop.set()

    async def _until_redis(self, call: Any) -> None:
        while True:
            try:
                await call()
                return
            except (RedisError, OSError) as exc:
                log.warning("Redis unavailable (%s); retrying", exc)
                await asyncio.sleep(_REDIS_RETRY_S)

    async def _hand_back(self) -> None:
        """Graceful stop: cancel the drivers and release their leases, marking their
        conversations due now, so another process adopts them at its next sweep instead of
        after the lease TTL. ``close`` came first, so no driver starts meanwhile."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- taking conversations --------------------------------------------------------------

    def close(self) -> None:
        """Take no conversation any more: every claim from now on is refused, and the hand-overs
        waiting for room are refused at once. The conversations held are kept until the stop
        hands them back. Idempotent; on the runner's loop (``loop.call_soon_threadsafe`` from
        another thread)."""
        self._closed = True
        while self._room:
            waiter = self._room.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def offer(self, conv: str, *, watch: bool = False, timeout: float = 30.0) -> bool:
        """Hand ``conv`` to the runner from another thread (a Dramatiq actor). Blocks while the
        process owns ``max_in_flight`` conversations, up to ``timeout`` seconds: that is the
        backpressure that leaves the queue's remaining messages to other processes. False when
        refused: still full after ``timeout``, or the runner is closed or not running; the
        conversation then waits in ``active`` for a sweeper."""
        loop = self._loop
        if loop is None or loop.is_closed() or self._closed:
            return False
        try:
            future: Future[bool] = asyncio.run_coroutine_threadsafe(
                self.claim(conv, watch=watch, wait=True, timeout=timeout), loop
            )
        except RuntimeError:  # the loop closed meanwhile
            return False
        try:
            # The claim bounds its own wait; the grace covers a loop too busy to answer.
            return future.result(timeout + _OFFER_GRACE_S)
        except TimeoutError:
            return False
        finally:
            future.cancel()  # no-op once done: a wait that outlived its caller must not take a slot later

    async def claim(self, conv: str, *, watch: bool = False, wait: bool = False, timeout: float | None = None) -> bool:
        """Own ``conv`` unless it is owned here already (then wake it). False when refused: the
        runner is closed, or full (and not ``wait``-ing, or still full after ``timeout``).

        Waiting hand-overs queue first come first served. When a slot frees, the first one is
        woken; one that then takes no slot (its conversation was taken meanwhile, its time ran out,
        it was cancelled) wakes the next, so a free slot never sits beside a waiting hand-over."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        front = False  # a waiter that lost its slot to another claim keeps its place
        while True:
            if self._closed:
                return False
            poke = self._pokes.get(conv)
            if poke is not None:
                poke.set()
                if front:
                    self._room_freed()  # woken for a slot it does not need: pass it on
                return True
            if len(self._pokes) < self.tuning.max_in_flight:
                break
            if not wait:
                return False
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if front:
                self._room.appendleft(waiter)
            else:
                self._room.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as exc:  # out of time, or cancelled (its caller gave up)
                if waiter.done() and not waiter.cancelled():
                    self._room_freed()  # woken in the same instant: the slot goes to the next
                else:
                    with contextlib.suppress(ValueError):
                        self._room.remove(waiter)
                if isinstance(exc, TimeoutError):
                    return False
                raise
            front = True
        self._pokes[conv] = asyncio.Event()
        task = asyncio.create_task(self._drive(conv, watch), name=f"ocsgw-turn:{conv}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if front:
            self._room_freed()  # several slots may have freed at once
        return True

    def _room_freed(self) -> None:
        """Wake the first waiting hand-over if there is room (all of them once closed)."""
        if self._closed:
            self.close()
            return
        if len(self._pokes) >= self.tuning.max_in_flight:
            return
        while self._room:
            waiter = self._room.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- one conversation ------------------------------------------------------------------

    async def _drive(self, conv_text: str, watch: bool) -> None:
        conv = ConversationKey.parse(conv_text)
        # This coroutine is its own task: what it binds is on this conversation's lines only
        # (ours, the OCS client's and the SDKs' it calls), never on another's.
        channel = self.services.config.channels.get(conv.channel)
        bind(
            channel=conv.channel, bot=channel.bot if channel else None,
            conversation=conversation_label(conv, reveal=self.services.config.log_message_text),
        )
        keys = self.services.keys
        hold: Hold | None = None
        again = False
        try:
            async with self._steps.step(StepGate.NEW):  # taking a conversation is a step too
                lease = await Lease.acquire(
                    self.services.redis, keys.lease(conv), ttl_s=self.tuning.lease_ttl_s,
                    active=keys.active, member=conv_text, hold_until=self._hold_until(),
                    durability=self.services.durability,
                )
            if lease is None:
                return  # another process owns it and will see anything new before it lets go
            carried = self._posted.pop(conv_text, None)
            hold = Hold(conv, lease, posted=carried[0] if carried else None)
            self._holds[conv_text] = hold
            if watch:
                async with self._steps.step(StepGate.NEW):
                    await self.watcher.look(hold)
            again = await self._run(hold, self._pokes[conv_text])
        except LeaseLost:
            log.info("lost the lease; its new owner goes on")
        except asyncio.CancelledError:
            if hold is not None and not hold.lease.lost:
                await self._give_back(hold)
            raise
        except (RedisError, OSError) as exc:
            log.warning("Redis error driving the conversation: %s; the sweeper will pick it up", exc)
        except Exception:  # a driver must never die silently
            log.exception("conversation driver failed")
        finally:
            self.services.reachability.forget(conv_text)
            if hold is not None and hold.posted is not None:
                self._posted[conv_text] = (hold.posted, time.monotonic())
            self._holds.pop(conv_text, None)
            self._pokes.pop(conv_text, None)
            self._room_freed()
        if again and not self._stopping:
            await self.claim(conv_text)

    async def _run(self, hold: Hold, poke: asyncio.Event) -> bool:
        """Step until the conversation is released; True if a wake-up arrived meanwhile."""
        keys = self.services.keys
        member = str(hold.conv)
        while True:
            async with self._steps.step(_priority(hold)):
                try:
                    outcome = await self.engine.step(hold)
                except (LeaseLost, asyncio.CancelledError):
                    raise
                except (RedisError, OSError) as exc:
                    hold.invalidate()
                    log.warning("Redis error in a step: %s", exc)
                    hold.lease.check()  # past the lease's life: stop, the next owner adopts it
                    await asyncio.sleep(_REDIS_RETRY_S)
                    continue
                except Exception as exc:  # noqa: BLE001 - counted, logged, dead-lettered in time
                    outcome = await self.engine.fail_unexpected(hold, exc)
            if outcome.kind == "continue":
                await asyncio.sleep(0)  # let the other conversations in between steps
                continue
            if outcome.kind == "idle":
                poke.clear()
                released = await hold.lease.release_if_idle(
                    inbox=keys.inbox(hold.conv), turn=keys.turn(hold.conv), active=keys.active, member=member
                )
                if released:
                    # A wake-up that came while the release was on its way found us still here;
                    # claim again once we are gone, so it is not lost.
                    return poke.is_set()
                hold.invalidate()  # a message arrived meanwhile
                continue
            delay = outcome.at - self.clock.now()
            if delay > 0:
                poke.clear()
                try:
                    await asyncio.wait_for(poke.wait(), timeout=delay)
                    if hold.turn is None:
                        hold.invalidate()  # new inbox items matter only between turns
                except TimeoutError:
                    pass

    async def _give_back(self, hold: Hold) -> None:
        try:
            await self.services.redis.zadd(self.services.keys.active, {str(hold.conv): self.clock.now()}, xx=True)
            await hold.lease.release()
        except (RedisError, OSError):
            pass  # the lease lapses on its own

    def _hold_until(self) -> float:
        return self.clock.now() + self.tuning.lease_ttl_s

    # -- background loops ------------------------------------------------------------------

    async def _housekeeping(
        self, task: str, interval: float, tick: Callable[[], Awaitable[Any]], *, at_once: bool = False
    ) -> None:
        """Run ``tick`` every ``interval`` seconds until cancelled. A loop that died would leave
        the process looking alive while its leases lapse or nobody adopts: so whatever one tick
        raises is logged, counted in ``ocsgw_housekeeping_errors_total{task}``, and the next
        tick runs."""
        if not at_once:
            await asyncio.sleep(interval)
        while True:
            await self._tick(task, tick)
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # The stop cancelled this loop inside a Redis call that swallowed it (redis-py
                # may, while it drops the connection): end now, not one interval later.
                raise asyncio.CancelledError
            await asyncio.sleep(interval)

    async def _tick(self, task: str, tick: Callable[[], Awaitable[Any]]) -> bool:
        metrics = self.services.metrics
        try:
            await tick()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is None or current.cancelling():
                raise  # the loop itself is being cancelled (the stop)
            # A callee's future cancelled by someone else: one failed tick, not the loop's end.
            metrics.housekeeping_errors.labels(task).inc()
            log.error("%s tick failed: cancelled from within; the next one runs", task)
            return False
        except (RedisError, OSError) as exc:
            # Expected while Redis is away: one line per tick, no traceback.
            metrics.housekeeping_errors.labels(task).inc()
            log.warning("%s tick failed, Redis unavailable: %s", task, exc)
            return False
        except Exception:  # the next tick must still run
            metrics.housekeeping_errors.labels(task).inc()
            log.exception("%s tick failed; the next one runs", task)
            return False
        metrics.housekeeping_ticks.labels(task).inc()
        return True

    async def _renew(self) -> None:
        held = [(hold.lease, key) for key, hold in list(self._holds.items())]
        await self.clock.maybe_resync()  # a round trip only once per resync period
        if not held:
            self.renewed_mono = time.monotonic()  # nothing to renew: an idle worker asks Redis nothing
            return
        for start in range(0, len(held), _RENEW_BATCH):
            await renew_leases(
                self.services.redis, self.services.keys.active, held[start:start + _RENEW_BATCH],
                hold_until=self._hold_until(),
            )
        self.renewed_mono = time.monotonic()
        for lease, key in held:
            if lease.lost:
                poke = self._pokes.get(key)
                if poke is not None:
                    poke.set()  # its driver finds the lease lost at its next write or call

    def _wake(self, conversations: Iterable[str]) -> None:
        """OCS answers again: the turns held here that back off from it step now."""
        woken = 0
        for conv in conversations:
            hold, poke = self._holds.get(conv), self._pokes.get(conv)
            if hold is not None and poke is not None:
                hold.woken = True
                poke.set()
                woken += 1
        if woken:
            log.info("OCS answers again: woke %d waiting turn(s)", woken)

    async def _probe_tick(self) -> None:
        """Probe each OCS origin that turns here wait for (``Reachability.due_probes``)."""
        for conv in self.services.reachability.due_probes().values():
            channel = ConversationKey.parse(conv).channel
            if channel in self.services.config.channels:
                await self.services.ocs_for(channel).probe()

    async def _sweep_tick(self) -> None:
        try:
            await self.sweep()
        except (RedisError, OSError):
            self._sweep_failed = True
            raise
        self.housekeeping_at = self.clock.now()
        self.swept_mono = time.monotonic()

    async def beat(self) -> heartbeats.Heartbeat:
        """Publish this process's heartbeat (``gateway/store/heartbeats.py``) and return it."""
        heartbeat = heartbeats.Heartbeat(
            worker_id=self.worker_id, host=socket.gethostname(), pid=os.getpid(), queue=QUEUE,
            started_at=self.started_at, beat_at=self.clock.now(), interval_s=self.tuning.heartbeat_interval_s,
            housekeeping_at=self.housekeeping_at, conversations=len(self._holds), version=VERSION,
            sweep_interval_s=self.tuning.sweep_interval_s,
            housekeeping_age_s=time.monotonic() - (self.started_mono if self.swept_mono is None else self.swept_mono),
        )
        await heartbeats.beat(self.services.redis, self.services.keys, heartbeat)
        now = self.clock.now()
        beats = await heartbeats.alive(self.services.redis, self.services.keys, now=now)
        self._peers = max(1, sum(1 for b in beats if b.state(now) == "alive"))
        return heartbeat

    async def _forget(self) -> None:
        """A clean stop leaves no heartbeat behind to be mistaken for a dead worker."""
        try:
            await heartbeats.forget(self.services.redis, self.services.keys, self.worker_id)
        except (RedisError, OSError) as exc:
            log.warning("could not remove this worker's heartbeat: %s", exc)

    def _forget_old_posts(self) -> None:
        """A carried part nobody here adopted within ``_POSTED_KEEP_S`` was taken on elsewhere."""
        horizon = time.monotonic() - _POSTED_KEEP_S
        for conv, (_, at) in list(self._posted.items()):
            if at < horizon:
                del self._posted[conv]

    async def sweep(self) -> tuple[int, int]:
        """Adopt overdue ownerless conversations and start due watches (one round
        trip); returns how many of each were taken."""
        room = self.tuning.max_in_flight - len(self._pokes)
        if room <= 0:
            return 0, 0
        if self._sweep_failed:
            # Redis is back after an outage: the first sweep to get through starts the deferral.
            self._sweep_failed = False
            self._defer_until = time.monotonic() + self.tuning.lease_ttl_s + self.tuning.stall_grace_s
        self._forget_old_posts()
        if time.monotonic() < self._defer_until:
            adopted = 0
            for conv in list(self._posted):
                if conv not in self._pokes and await self.claim(conv):
                    adopted += 1
            return adopted, 0
        now = self.clock.now()
        keys = self.services.keys
        overdue, polls, total = await _SWEEP(
            self.services.redis,
            [keys.active, keys.watch],
            [now - self.tuning.stall_grace_s, now, _ADOPT_PER_SWEEP, self.tuning.watch_per_sweep],
        )
        # A fair share each: a dead worker's conversations are spread over the live ones, not
        # all taken by whichever sweeper came first while the others sit idle. The candidates are
        # shuffled so that sweepers racing for the same backlog mostly try different ones.
        share = min(room, fair_share(int(total), self._peers))
        candidates = [raw.decode() if isinstance(raw, bytes) else str(raw) for raw in overdue]
        random.shuffle(candidates)
        adopted = 0
        for conv in candidates:
            if adopted >= share:
                break
            if conv not in self._pokes and await self.claim(conv):
                adopted += 1
        started = 0

        async def start_watches() -> None:
            nonlocal started
            for raw in polls:
                conv = raw.decode() if isinstance(raw, bytes) else str(raw)
                if conv not in self._pokes and await self.claim(conv, watch=True):
                    started += 1

        # Fetched in the sweep's round trip, but a tick of its own: a failure here neither
        # hides the adoptions nor stops the next sweep.
        await self._tick("watch", start_watches)
        if adopted:
            log.info("adopted %d overdue conversation(s)", adopted)
        if started:
            log.debug("started %d watch(es)", started)
        return adopted, started


def fair_share(overdue: int, workers: int) -> int:
    """How many of ``overdue`` conversations one of ``workers`` live sweepers adopts per sweep: an
    even split, rounded up so that together they take the whole backlog in one sweep."""
    return max(1, math.ceil(overdue / max(workers, 1))) if overdue > 0 else 0


def _priority(hold: Hold) -> int:
    waiting = hold.turn is not None and hold.turn.state not in (TurnState.RECEIVED,)
    return StepGate.URGENT if waiting else StepGate.NEW
