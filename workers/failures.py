"""The failure policy: what a turn does when a step could not complete.

* A limit (OCS's, its WAF's, our budget's, a platform's pacing) is a **pause**: wait, count no
  attempt, write nothing.
* A passing fault (OCS 5xx or unreachable, a platform down) is a **retry** with jittered
  exponential backoff, recorded in the ledger: within ``max_attempts`` for OCS, within the
  channel's ``delivery_retry_budget_s`` for delivery.
* What cannot succeed (OCS refused it, a platform rejected it, attempts or budget spent) is
  **parked** in the dead-letter store, and the user is told once (``failure_notice``).
* Something nobody planned for (a bug, an answer of a new shape) counts as an attempt, so one bad
  message never blocks the ones behind it.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import replace

from gateway.core.config import WorkerTuning
from gateway.core.errors import OCSRateLimited, OCSUnavailable, RetryLater, SessionExpired
from gateway.core.logs import bound
from gateway.core.models import ConversationKey, InboundKind, Reply, ReplyKind
from gateway.store.clock import RedisClock
from gateway.store.dead_letters import DeadLetterStage
from gateway.store.lease import LeaseLost, Op
from gateway.store.ledger import Turn, TurnState
from workers.closing import TurnCloser
from workers.context import WorkerServices
from workers.hold import CONTINUE, Hold, Outcome, wait_until

__all__ = ["FailurePolicy"]

log = logging.getLogger("ocsgw.turns")


class FailurePolicy:
    def __init__(self, services: WorkerServices, tuning: WorkerTuning, clock: RedisClock, closer: TurnCloser) -> None:
        self.services = services
        self.tuning = tuning
        self.clock = clock
        self.closer = closer
        self._paused_logged: dict[str, float] = {}

    # -- pauses -------------------------------------------------------------------------------

    def note_pause(self, conv: ConversationKey, exc: OCSRateLimited) -> None:
        """Say so when turns start waiting on a limit, at most once a minute per bot and kind:
        an operator must see a budget or WAF stall, but not once per turn."""
        bot = self.services.config.channels[conv.channel].bot
        key = f"{bot}:{exc.scope}"
        now = time.monotonic()
        if now - self._paused_logged.get(key, float("-inf")) >= 60.0:
            self._paused_logged[key] = now
            log.warning("turns of bot %s are waiting on a request limit (%s): %s", bot, exc.scope, exc)

    def pause(self, hold: Hold, seconds: float) -> Outcome:
        """Wait without counting an attempt (rate limits, budget, pacing)."""
        return self.wait_in_memory(hold, max(seconds, 0.05) * random.uniform(1.0, 1.2))

    def wait_in_memory(self, hold: Hold, seconds: float) -> Outcome:
        """Step again in ``seconds``; only this process's memory records it (a new owner after a
        crash simply steps at once)."""
        at = self.clock.now() + seconds
        if hold.turn is not None:
            hold.keep(replace(hold.turn, next_at=at))
        return wait_until(at)

    # -- retries ------------------------------------------------------------------------------

    def backoff(self, attempts: int) -> float:
        base = min(self.tuning.backoff_base_s * 2 ** max(attempts - 1, 0), self.tuning.backoff_max_s)
        return float(base * random.uniform(0.5, 1.0))  # jitter: retries of many turns never march in step

    async def retry(self, hold: Hold, turn: Turn, exc: Exception) -> Outcome:
        attempts = turn.attempts + 1
        if attempts >= self.tuning.max_attempts:
            return await self.fail(hold, turn, f"gave up after {attempts} attempts: {type(exc).__name__}: {exc}")
        asked = getattr(exc, "retry_after_s", None)
        delay = max(float(asked or 0.0), self.backoff(attempts))
        next_at = self.clock.now() + delay
        log.warning("retry in %.1fs: %s: %s", delay, type(exc).__name__, exc)
        turn, ops = self.services.ledger.update(
            hold.conv, turn, attempts=attempts, last_error=f"{type(exc).__name__}: {exc}"[:500], next_at=next_at
        )
        await hold.write(ops, turn=turn)
        if isinstance(exc, OCSUnavailable):
            # Woken as soon as OCS answers again, not when the backoff says (gateway/ocs/reachability.py).
            self.services.reachability.wait(self.services.ocs_for(hold.conv.channel).origin, str(hold.conv))
        return wait_until(next_at)

    async def retry_delivery(self, hold: Hold, turn: Turn, exc: RetryLater) -> Outcome:
        """The platform or callback is down or throttling: back off exponentially (honouring
        its retry-after) within the channel's time budget, never by a count of attempts."""
        if turn.state is not TurnState.DELIVERING:
            return await self.retry(hold, turn, exc)
        now = self.clock.now()
        since = turn.failing_since or now
        budget = self.services.config.channels[hold.conv.channel].delivery_retry_budget_s
        if now - since > budget:
            return await self.fail(hold, turn, f"delivery failing for {now - since:.0f} s: {exc}")
        attempts = turn.attempts + 1
        delay = max(exc.retry_after_s, self.backoff(attempts))
        next_at = now + delay
        log.warning("delivery retry in %.1fs: %s", delay, exc)
        turn, ops = self.services.ledger.update(
            hold.conv, turn, attempts=attempts, failing_since=since, last_error=str(exc)[:500], next_at=next_at
        )
        await hold.write(ops, turn=turn)
        return wait_until(next_at)

    async def session_gone(self, hold: Hold, turn: Turn, exc: SessionExpired) -> Outcome:
        """The session died while we waited (token expired, OCS forgot it): forget it and go
        again in a new one (the message is resent there: it never got an answer)."""
        log.info("session gone mid-turn: %s", exc.code)
        attempts = turn.attempts + 1
        if attempts >= self.tuning.max_attempts:
            return await self.fail(hold, turn, f"session kept failing: {exc.code}")
        turn, ops = self.services.ledger.update(hold.conv, turn, state=TurnState.RECEIVED, last_error=str(exc), attempts=attempts)
        record, forget = self.services.conversations.forget_session(hold.conv, hold.record)
        await hold.write([*ops, *forget], turn=turn, record=record)
        return CONTINUE

    async def recipient_gone(self, hold: Hold, turn: Turn, reason: str) -> Outcome:
        """The user blocked us, left, or the callback unsubscribed: no more sends to them."""
        log.info("recipient gone: %s", reason)
        record, ops = self.services.conversations.set_gone(hold.conv, hold.record, True)
        await hold.write(ops, record=record)
        await self.closer.finish(hold, turn, outcome="gone")
        return CONTINUE

    # -- giving up ----------------------------------------------------------------------------

    async def fail(self, hold: Hold, turn: Turn, error: str) -> Outcome:
        """Park the turn in the dead-letter store; tell the user once, if we still can."""
        with bound(turn=turn.id):  # also reached from fail_unexpected, outside the step
            log.error("dead-lettered: %s", error)
        if turn.dead_letter:
            await self.closer.finish(hold, turn, outcome="failed")  # the notice itself failed: nothing more to do
            return CONTINUE
        stage = DeadLetterStage.DELIVERY if turn.state is TurnState.DELIVERING else DeadLetterStage.OCS
        letter = await self.park(hold, turn, error, stage=stage)
        if stage is DeadLetterStage.DELIVERY or turn.inbound.kind is InboundKind.PUSH:
            await self.closer.finish(hold, turn, outcome="failed")
            return CONTINUE
        channel = self.services.config.channels[hold.conv.channel]
        notice = Reply(channel.failure_notice, ReplyKind.NOTICE, in_reply_to=turn.last.event_id)
        await self.closer.answer(hold, turn, notice, dead_letter=letter, last_error=error[:500])
        return CONTINUE

    async def park(self, hold: Hold, turn: Turn, error: str, *, stage: DeadLetterStage) -> str:
        hold.lease.check()
        letter = await self.services.dead_letters.park(
            hold.conv, turn.inbound_raw, error=error, ocs=turn.ocs_ids(), stage=stage,
            ledger={"turn": turn.id, "state": str(turn.state), "attempts": turn.attempts, "delivered": turn.delivered},
            reply=turn.reply if stage is DeadLetterStage.DELIVERY else None,
            parts=turn.parts[turn.delivered:] if stage is DeadLetterStage.DELIVERY else (),
            batch=turn.batch_raw,
        )
        return letter.id

    async def fail_unexpected(self, hold: Hold, exc: BaseException) -> Outcome:
        """A step raised something nobody planned for (a bug, an OCS answer of a new shape): it
        counts as an attempt, and after ``max_attempts`` the turn is parked and the conversation
        moves on, so one bad message never blocks the ones behind it."""
        hold.failures += 1
        with bound(turn=hold.turn.id if hold.turn else None):
            log.error("unexpected error (%d in a row)", hold.failures, exc_info=exc)
        hold.invalidate()
        delay = self.backoff(hold.failures)
        try:
            await hold.refresh(self.services.ledger)
        except LeaseLost:
            raise
        except Exception:  # noqa: BLE001 - the stored state itself cannot be read
            if hold.failures >= self.tuning.max_attempts:
                await self._drop_unreadable(hold, repr(exc))
                return CONTINUE
            return wait_until(self.clock.now() + delay)
        turn = hold.turn
        if turn is None:
            if hold.head is not None and hold.failures >= self.tuning.max_attempts:
                await self._drop_unreadable(hold, repr(exc))
                return CONTINUE
            return wait_until(self.clock.now() + delay)
        attempts = max(turn.attempts + 1, hold.failures)
        error = f"unexpected {type(exc).__name__}: {exc}"
        if attempts >= self.tuning.max_attempts or turn.dead_letter:
            return await self.fail(hold, turn, error)
        next_at = self.clock.now() + delay
        turn, ops = self.services.ledger.update(hold.conv, turn, attempts=attempts, last_error=error[:500], next_at=next_at)
        await hold.write(ops, turn=turn)
        return wait_until(next_at)

    async def _drop_unreadable(self, hold: Hold, error: str) -> None:
        """The head item or its ledger cannot even be read: park it raw and move on."""
        keys = self.services.keys
        raw = hold.head or ""
        hold.lease.check()
        await self.services.dead_letters.park(hold.conv, raw, error=f"unreadable: {error}", ocs={}, ledger={}, stage=DeadLetterStage.UNREADABLE)
        # Out of the waiting index too, as a finished turn is; the next begin puts the conversation back.
        ops = [Op("DEL", keys.turn(hold.conv)), Op("ZREM", keys.waiting, (str(hold.conv),))]
        if raw:
            ops.append(Op("LREM", keys.inbox(hold.conv), (1, raw)))
        await hold.write(ops, turn=None)
        hold.invalidate()
        log.error("parked an unreadable inbox item")
