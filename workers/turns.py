"""The turn engine: the steps of one conversation's turns, each recorded before the next.

The engine is driven by the turn runner (``workers/runner.py``), which owns the conversation
through its lease and calls ``step`` until the conversation is idle or must wait. A step does
one thing that can be done now (start the session, send, poll the task once, deliver) and
returns what to do next: continue, wait until a time, or nothing left. Waiting is the runner's
business (a timer on its event loop): the engine never sleeps and never holds a thread.

Every write goes through the lease (``Lease.run``), so a process that lost the conversation can
never overwrite the new owner. Between writes the owner keeps the turn in memory (``Hold``): a
task poll that finds the bot still thinking writes nothing at all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from redis.exceptions import RedisError

from gateway.core.channel import ChannelAdapter
from gateway.core.config import WorkerTuning
from gateway.core.errors import (
    AttachmentUnavailable,
    DeliveryRejected,
    OCSAmbiguous,
    OCSAuthFailed,
    OCSRateLimited,
    OCSRejected,
    OCSUnavailable,
    PacingWait,
    RecipientGone,
    RetryLater,
    SessionExpired,
)
from gateway.core.logs import bound
from gateway.core.models import (
    ConversationKey,
    InboundKind,
    OCSSession,
    Outgoing,
    Reply,
    ReplyAttachment,
    ReplyKind,
    Route,
)
from gateway.store.clock import RedisClock
from gateway.store.conversations import ConversationRecord
from gateway.store.dead_letters import DeadLetterStage
from gateway.store.fingerprints import delivered_ops
from gateway.store.lease import Lease, LeaseLost, Op
from gateway.store.ledger import Turn, TurnLedger, TurnState
from gateway.store.reply_delays import delay_ops
from workers.context import WorkerServices
from workers.poll_schedule import CompletionHistogram, HistogramStore, PollSchedule

__all__ = ["Hold", "Outcome", "TurnEngine", "reply_from_ocs"]

log = logging.getLogger("ocsgw.turns")

#: How often a bot's learned completion times are read again from Redis.
_SCHEDULE_REFRESH_S = 30.0
#: ... or sooner, once this process has learned this many new completion times (a young bot's
#: schedule sharpens quickly), but not more than once a second (building a plan costs ~10 ms).
_SCHEDULE_REFRESH_AFTER = 25
_SCHEDULE_MIN_AGE_S = 1.0
#: While a settled-but-unanswered send waits for its reply in the history, look this often.
_HISTORY_POLL_S = 1.0
_HISTORY_PAGE = 200
#: Tries of a platform file download that keeps failing before the text goes without it.
_ATTACHMENT_TRIES = 3


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Literal["continue", "wait", "idle"]
    #: For "wait": when to step again, on the shared clock (``RedisClock.now``).
    at: float = 0.0


CONTINUE = Outcome("continue")
IDLE = Outcome("idle")


@dataclass
class Hold:
    """A conversation this process owns: its lease and what it last read or wrote."""

    conv: ConversationKey
    lease: Lease
    turn: Turn | None = None
    record: ConversationRecord | None = None
    head: str | None = None
    #: The memory may be behind Redis (after an error, or new inbox items): read before stepping.
    stale: bool = True
    #: Unexpected failures in a row (reset by any step that completes).
    failures: int = 0
    #: When OCS most likely completed the current turn's task (shared clock), until its first
    #: part reaches the platform: the start of ``ocsgw_reply_delay_seconds``. Memory only: a
    #: turn adopted after a crash is simply not measured.
    ready_at: float | None = None

    async def refresh(self, ledger: TurnLedger) -> None:
        """Read the turn, the conversation record and the inbox's head again (one round trip)."""
        snapshot = await ledger.load(self.conv)
        self.turn, self.record, self.head = snapshot.turn, snapshot.record, snapshot.head
        self.stale = False


def reply_from_ocs(message: Mapping[str, Any], *, kind: ReplyKind, in_reply_to: str | None) -> Reply:
    """A reply from an OCS message; fields OCS may add later are ignored, odd values coerced."""
    attachments = tuple(_attachment(a) for a in message.get("attachments") or () if isinstance(a, Mapping))
    return Reply(text=str(message.get("content") or ""), kind=kind, attachments=attachments, in_reply_to=in_reply_to)


def _turn_outcome(turn: Turn) -> str:
    """How a turn that ended normally ended, for ``ocsgw_turn_seconds{outcome}``."""
    if turn.dead_letter:
        return "failed"
    if turn.inbound.kind is InboundKind.PUSH:
        return "push"
    if turn.inbound.kind is InboundKind.RESET:
        return "reset"
    if turn.reply is not None and turn.reply.kind is ReplyKind.ANSWER:
        return "answered"
    return "notice"  # the gateway's own words: a slow-bot notice, OCS's error text


def _attachment(data: Mapping[str, Any]) -> ReplyAttachment:
    try:
        size = int(data.get("size") or 0)
    except (TypeError, ValueError):
        size = 0
    return ReplyAttachment(
        name=str(data.get("name") or "file"),
        content_type=str(data.get("content_type") or "application/octet-stream"),
        size=size,
        content_url=str(data.get("content_url") or ""),
    )


class TurnEngine:
    """Parameters:
    services: the process's services.
    tuning: pacing and retry settings.
    clock: the shared clock every stored time is read from.
    """

    def __init__(self, services: WorkerServices, tuning: WorkerTuning, clock: RedisClock) -> None:
        self.services = services
        self.tuning = tuning
        self.clock = clock
        self.histograms = HistogramStore(services.redis, services.keys)
        self._schedules: dict[str, tuple[PollSchedule, float]] = {}
        self._refreshing: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._paused_logged: dict[str, float] = {}
        #: Completion times this process learned per bot since its schedule was last rebuilt.
        self._learned: dict[str, int] = {}

    # -- the step -------------------------------------------------------------------------

    async def step(self, hold: Hold) -> Outcome:
        if hold.stale or hold.record is None:
            await hold.refresh(self.services.ledger)
        turn = hold.turn
        if turn is None:
            if hold.head is None:
                return IDLE
            turn, ops = self.services.ledger.begin(hold.conv, hold.head, now=self.clock.now())
            await self._write(hold, ops, turn=turn)
        # The turn's ids on every line of the step: ours, the OCS client's, the adapter's SDK's.
        with bound(turn=turn.id, event_id=turn.inbound.event_id, task_id=turn.task_id):
            return await self._step_turn(hold, turn)

    async def _step_turn(self, hold: Hold, turn: Turn) -> Outcome:
        now = self.clock.now()
        if turn.next_at > now + 0.005:
            return Outcome("wait", turn.next_at)  # woken early: wait again, nothing lost
        conv = hold.conv
        if conv.channel not in self.services.adapters:
            await self._park(hold, turn, f"channel {conv.channel!r} is no longer configured", stage=DeadLetterStage.CONFIG)
            await self._finish(hold, turn, outcome="failed")
            return CONTINUE
        try:
            outcome = await self._dispatch(hold, turn)
        except OCSRateLimited as exc:
            # OCS, its WAF or our own budget asked us to wait: a pause, not a failure.
            self._note_pause(conv, exc)
            outcome = self._pause(hold, exc.retry_after_s)
        except PacingWait as exc:
            outcome = self._pause(hold, exc.retry_after_s)
        except RetryLater as exc:
            outcome = await self._retry_delivery(hold, exc)
        except OCSUnavailable as exc:
            outcome = await self._retry(hold, exc)
        except SessionExpired as exc:
            outcome = await self._session_gone(hold, exc)
        except RecipientGone as exc:
            log.info("recipient gone: %s", exc.reason)
            current = hold.turn or turn
            await self._write(hold, self.services.conversations.set_gone_ops(conv, True))
            hold.record = replace(hold.record, gone=True) if hold.record else None
            await self._finish(hold, current, outcome="gone")
            outcome = CONTINUE
        except (OCSRejected, OCSAuthFailed, DeliveryRejected) as exc:
            outcome = await self._fail(hold, hold.turn or turn, f"{type(exc).__name__}: {exc}")
        hold.failures = 0
        return outcome

    async def fail_unexpected(self, hold: Hold, exc: BaseException) -> Outcome:
        """A step raised something nobody planned for (a bug, an OCS answer of a new shape): it
        counts as an attempt, and after ``max_attempts`` the turn is parked and the conversation
        moves on, so one bad message never blocks the ones behind it."""
        hold.failures += 1
        with bound(turn=hold.turn.id if hold.turn else None):
            log.error("unexpected error (%d in a row)", hold.failures, exc_info=exc)
        hold.stale = True
        delay = self._backoff(hold.failures)
        try:
            await hold.refresh(self.services.ledger)
        except LeaseLost:
            raise
        except Exception:  # noqa: BLE001 - the stored state itself cannot be read
            if hold.failures >= self.tuning.max_attempts:
                await self._drop_unreadable(hold, repr(exc))
                return CONTINUE
            return Outcome("wait", self.clock.now() + delay)
        turn = hold.turn
        if turn is None:
            if hold.head is not None and hold.failures >= self.tuning.max_attempts:
                await self._drop_unreadable(hold, repr(exc))
                return CONTINUE
            return Outcome("wait", self.clock.now() + delay)
        attempts = max(turn.attempts + 1, hold.failures)
        error = f"unexpected {type(exc).__name__}: {exc}"
        if attempts >= self.tuning.max_attempts or turn.dead_letter:
            return await self._fail(hold, turn, error)
        next_at = self.clock.now() + delay
        turn, ops = self.services.ledger.update(hold.conv, turn, attempts=attempts, last_error=error[:500], next_at=next_at)
        await self._write(hold, ops, turn=turn)
        return Outcome("wait", next_at)

    async def _write(self, hold: Hold, ops: list[Op], *, turn: Turn | None = None) -> list[Any]:
        try:
            result = await hold.lease.run(ops)
        except LeaseLost:
            raise
        except BaseException:
            hold.stale = True  # we cannot tell whether it was written
            raise
        if turn is not None:
            hold.turn = turn
        return result

    async def _dispatch(self, hold: Hold, turn: Turn) -> Outcome:
        record = hold.record
        assert record is not None
        if record.gone:
            if turn.inbound.kind is not InboundKind.PUSH and turn.state is TurnState.RECEIVED:
                # They wrote to us again (a callback that came back, a re-invited app): reachable.
                await self._write(hold, self.services.conversations.set_gone_ops(hold.conv, False))
                hold.record = record = replace(record, gone=False)
            else:
                await self._finish(hold, turn, outcome="gone")  # no more sends to a user who blocked us
                return CONTINUE
        if turn.state is TurnState.RECEIVED:
            return await self._start(hold, turn)
        if turn.state is TurnState.SENDING:
            return await self._settle_sending(hold, turn)
        if turn.state is TurnState.SENT:
            return await self._poll(hold, turn)
        if turn.state is TurnState.REPLIED:
            assert turn.reply is not None
            await self._replied(hold, turn, turn.reply)
            return CONTINUE
        if turn.state is TurnState.DELIVERING:
            return await self._deliver(hold, turn)
        await self._finish(hold, turn)
        return CONTINUE

    # -- states ---------------------------------------------------------------------------

    async def _start(self, hold: Hold, turn: Turn) -> Outcome:
        conv, inbound = hold.conv, turn.inbound
        channel = self.services.config.channels[conv.channel]
        if inbound.kind is InboundKind.PUSH:
            attachments = tuple(_attachment(a) for a in inbound.context.get("attachments", ()) if isinstance(a, Mapping))
            reply = Reply(text=inbound.text, kind=ReplyKind.PUSH, attachments=attachments)
            # A replayed delivery carries the parts that were never delivered: only those go out.
            stored = inbound.context.get("parts")
            parts = tuple(Outgoing.from_dict(p) for p in stored) if isinstance(stored, list) and stored else None
            await self._replied(hold, turn, reply, parts=parts)
            return CONTINUE
        touch = self.services.conversations.touch_ops(conv, inbound.route, now=self.clock.now())
        if inbound.kind is InboundKind.RESET:
            await self._reset(hold, touch)
            reply = Reply(text=channel.reset_notice, kind=ReplyKind.NOTICE, in_reply_to=inbound.event_id)
            await self._replied(hold, turn, reply)
            return CONTINUE
        session = await self._ensure_session(hold, turn)
        turn = await self._show_working(hold, turn)
        return await self._send(hold, turn, session, touch)

    async def _reset(self, hold: Hold, touch: list[Op]) -> None:
        record = hold.record
        assert record is not None
        if record.session is not None:
            hold.lease.check()
            try:
                await self.services.ocs_for(hold.conv.channel).end_session(record.session.session_id)
            except OCSRejected as exc:
                # Whatever OCS thinks of it, the user asked for a fresh start: forget it here.
                log.warning("could not end the OCS session: %s", exc)
        await self._write(hold, [*self.services.conversations.forget_session_ops(hold.conv), *touch])
        hold.record = replace(record, session=None, cursor=None, user_messages=None)
        await self.services.adapters[hold.conv.channel].forget_conversation(hold.turn.inbound.route if hold.turn else {})

    async def _ensure_session(self, hold: Hold, turn: Turn) -> OCSSession:
        record = hold.record
        assert record is not None
        ocs = self.services.ocs_for(hold.conv.channel)
        session = record.session
        if session is not None and session.chatbot_id == ocs.bot.chatbot_id:
            return session
        adapter = self.services.adapters[hold.conv.channel]
        hold.lease.check()
        session = await ocs.start_session(
            remote_id=f"{adapter.kind}:{hold.conv.conversation}", name=turn.inbound.sender_name, channel=hold.conv.channel
        )
        await self._write(hold, self.services.conversations.save_session_ops(hold.conv, session))
        hold.record = replace(record, session=session, cursor=None, user_messages=0)
        log.info("started OCS session %s", session.session_id)
        return session

    async def _send(self, hold: Hold, turn: Turn, session: OCSSession, touch: list[Op]) -> Outcome:
        """Upload the files and send the message, once. ``sending`` (with the count the session
        will reach) is recorded first, so a send that dies or gets no answer is settled from the
        history; an expired or vanished session is replaced and the message resent once."""
        conv = hold.conv
        ocs = self.services.ocs_for(conv.channel)
        ledger, conversations = self.services.ledger, self.services.conversations
        for attempt in (1, 2):
            ids, notes = await self._upload(hold, turn, session)
            inbound = turn.inbound
            text = inbound.text.strip() or ("[attachment]" if inbound.attachments else "(empty message)")
            if notes:
                text = "\n".join([text, *notes])
            base = await self._user_message_count(hold, session)
            turn, ops = ledger.update(
                conv, turn, state=TurnState.SENDING, sending_at=self.clock.now(), session_id=session.session_id,
                expect_count=base + 1, confirmed=False,
            )
            await self._write(hold, [*ops, *touch], turn=turn)
            touch = []
            if self.services.config.log_message_text:
                log.debug("message to OCS: %r", text)  # an operator's opt-in (log_message_text)
            hold.lease.check()
            try:
                task_id = await ocs.send_message(session, text, attachment_ids=ids, context=inbound.context)
            except SessionExpired as exc:
                if attempt == 2:
                    raise
                log.info("session %s gone (%s): new session, resending", session.session_id, exc.code)
                turn, ops = ledger.update(conv, turn, state=TurnState.RECEIVED)
                await self._write(hold, [*ops, *conversations.forget_session_ops(conv)], turn=turn)
                hold.record = replace(hold.record, session=None, user_messages=None) if hold.record else None
                session = await self._ensure_session(hold, turn)
                continue
            except OCSAmbiguous as exc:
                # It left and no answer came back: OCS may be running it. Never send it again
                # blindly; the history will say (``_settle_sending``).
                log.warning("send without answer: %s; settling from the history", exc)
                return self._wait_in_memory(hold, min(_HISTORY_POLL_S, self.tuning.reconcile_grace_s))
            except (OCSUnavailable, OCSRateLimited, OCSRejected):
                # Not accepted: back to "received", so the retry sends instead of searching.
                turn, ops = ledger.update(conv, turn, state=TurnState.RECEIVED)
                await self._write(hold, ops, turn=turn)
                raise
            now = self.clock.now()
            first = self._schedule(conv).next_delay(0.0, 0)
            turn, ops = ledger.update(
                conv, turn, state=TurnState.SENT, task_id=task_id, sent_at=now, attempts=0, polls=0,
                last_poll_s=0.0, next_at=now + first,
            )
            await self._write(hold, [*ops, *conversations.count_ops(conv, base + 1)], turn=turn)
            hold.record = replace(hold.record, user_messages=base + 1) if hold.record else None
            return Outcome("wait", now + first)
        raise AssertionError("unreachable")

    async def _user_message_count(self, hold: Hold, session: OCSSession) -> int:
        record = hold.record
        if record is not None and record.user_messages is not None and record.session == session:
            return record.user_messages
        # A session from before the gateway counted: count its history once.
        history = await self._history(hold, session)
        count = sum(1 for m in history if m.get("role") == "user")
        await self._write(hold, self.services.conversations.count_ops(hold.conv, count))
        if record is not None:
            hold.record = replace(record, user_messages=count)
        return count

    async def _upload(self, hold: Hold, turn: Turn, session: OCSSession) -> tuple[list[int], list[str]]:
        inbound = turn.inbound
        if not inbound.attachments:
            return [], []
        adapter = self.services.adapters[hold.conv.channel]
        files: list[tuple[str, bytes, str]] = []
        notes: list[str] = []
        for attachment in inbound.attachments:
            try:
                got = await adapter.download(attachment, inbound.route)
            except AttachmentUnavailable as exc:
                notes.append(f"[{attachment.name} could not be attached: {exc.reason}]")
                continue
            except RetryLater as exc:
                if turn.attempts + 1 < _ATTACHMENT_TRIES:
                    raise  # a passing blip: try the whole step again shortly
                # Still down: the words go through without the file rather than not at all.
                notes.append(f"[{attachment.name} could not be attached: temporarily unavailable]")
                log.warning("attachment still unavailable: %s", exc)
                continue
            files.append((got.name, got.data, got.content_type))
        if not files:
            return [], notes
        hold.lease.check()
        try:
            return await self.services.ocs_for(hold.conv.channel).upload(session, files), notes
        except OCSRejected as exc:
            # A file type OCS refuses must not sink the words that came with it.
            return [], [*notes, f"[attachments not accepted: {exc.body}]"]

    async def _settle_sending(self, hold: Hold, turn: Turn) -> Outcome:
        """A send whose outcome is unknown (the worker died, or the answer never came back):
        count the user messages in the session's history. ``expect_count`` of them means OCS
        has it (its reply is the first assistant message after it); fewer means it has not
        arrived, and after ``reconcile_grace_s`` it is sent again (OCS writes the user message
        when its worker picks the task up, §4.2, so a moment's absence proves nothing)."""
        record = hold.record
        conv = hold.conv
        now = self.clock.now()
        session = record.session if record else None
        if session is None or session.session_id != turn.session_id:
            turn, ops = self.services.ledger.update(conv, turn, state=TurnState.RECEIVED)
            await self._write(hold, ops, turn=turn)
            return CONTINUE
        history = await self._history(hold, session)
        users = [i for i, m in enumerate(history) if m.get("role") == "user"]
        if turn.expect_count and len(users) >= turn.expect_count:
            after = users[turn.expect_count - 1] + 1
            answer = next((m for m in history[after:] if m.get("role") == "assistant"), None)
            count_ops = self.services.conversations.count_ops(conv, turn.expect_count)
            if hold.record is not None:
                hold.record = replace(hold.record, user_messages=turn.expect_count)
            if answer is not None:
                reply = reply_from_ocs(answer, kind=ReplyKind.ANSWER, in_reply_to=turn.inbound.event_id)
                await self._replied(hold, turn, reply, extra=[*count_ops, *delivered_ops(self.services.keys.fingerprints(conv), answer, now=now)])
                return CONTINUE
            if now - turn.sending_at > self.services.ocs_for(conv.channel).bot.task_timeout_s:
                return await self._too_slow(hold, turn)
            if not turn.confirmed:
                turn, ops = self.services.ledger.update(conv, turn, confirmed=True)
                await self._write(hold, [*ops, *count_ops], turn=turn)
            return self._wait_in_memory(hold, _HISTORY_POLL_S)
        if now - turn.sending_at > self.tuning.reconcile_grace_s:
            log.warning("message never reached OCS: sending it again")
            turn, ops = self.services.ledger.update(conv, turn, state=TurnState.RECEIVED)
            await self._write(hold, ops, turn=turn)
            return CONTINUE
        return self._wait_in_memory(hold, _HISTORY_POLL_S)

    async def _history(self, hold: Hold, session: OCSSession) -> list[Mapping[str, Any]]:
        ocs = self.services.ocs_for(hold.conv.channel)
        messages: list[Mapping[str, Any]] = []
        since: str | None = None
        while True:
            hold.lease.check()
            page = await ocs.session_messages(session, since=since, limit=_HISTORY_PAGE)
            messages.extend(page.messages)
            if not page.has_more or not page.messages:
                return messages
            since = str(page.messages[-1].get("created_at") or "") or None

    async def _poll(self, hold: Hold, turn: Turn) -> Outcome:
        conv = hold.conv
        record = hold.record
        session = record.session if record else None
        if session is None or session.session_id != turn.session_id:
            turn, ops = self.services.ledger.update(conv, turn, state=TurnState.RECEIVED)
            await self._write(hold, ops, turn=turn)
            return CONTINUE
        ocs = self.services.ocs_for(conv.channel)
        hold.lease.check()
        asked = self.clock.now()
        result = await ocs.poll_task(session, turn.task_id)
        now = self.clock.now()
        elapsed = max(now - turn.sent_at, 0.0)
        # OCS looked at the task about halfway through our request: that is what the bot's
        # completion-time histogram learns from, not when the answer reached us.
        looked = max((asked + now) / 2 - turn.sent_at, 0.0)
        if result.status in ("complete", "error"):
            self.services.metrics.task_polls_per_turn.labels(ocs.name).observe(turn.polls + 1)
        if result.status == "complete" and result.message is not None:
            # OCS finished somewhere between the last poll that saw it working and this one.
            hold.ready_at = turn.sent_at + (turn.last_poll_s + looked) / 2
            if looked - turn.last_poll_s <= self.tuning.poll_max_s:
                # Only a narrow interval says when the bot finished; a poll made late (a burst,
                # an adoption) would teach the schedule the gateway's delay, not the bot's.
                self._learn(ocs.name, turn.last_poll_s, looked)
            reply = reply_from_ocs(result.message, kind=ReplyKind.ANSWER, in_reply_to=turn.inbound.event_id)
            fingerprints = delivered_ops(self.services.keys.fingerprints(conv), result.message, now=now)
            await self._replied(hold, turn, reply, extra=fingerprints)
            return CONTINUE
        if result.status == "error":
            # OCS's error text is written for the end user (§4.3): it is the answer.
            reply = Reply(text=result.error or "", kind=ReplyKind.NOTICE, in_reply_to=turn.inbound.event_id)
            await self._replied(hold, turn, reply, last_error=result.error or "")
            return CONTINUE
        if elapsed > ocs.bot.task_timeout_s:
            return await self._too_slow(hold, turn)
        turn = await self._show_working(hold, turn)
        wait = self._schedule(conv).next_delay(elapsed, turn.polls + 1)
        refresh = self.services.adapters[conv.channel].working_refresh_s
        if refresh:
            wait = min(wait, max(refresh - (now - turn.working_at), 0.05))  # keep the indicator alive
        # Nothing is written for a poll that saw no answer: after a crash the next owner simply
        # polls again. Only this process's memory moves on.
        hold.turn = replace(turn, polls=turn.polls + 1, last_poll_s=looked, next_at=now + wait)
        return Outcome("wait", now + wait)

    async def _too_slow(self, hold: Hold, turn: Turn) -> Outcome:
        """Our own timeout (an unknown task polls as processing forever, §0.9): tell the user,
        and let the watch deliver the answer when it lands."""
        channel = self.services.config.channels[hold.conv.channel]
        reply = Reply(text=channel.slow_notice, kind=ReplyKind.NOTICE, in_reply_to=turn.inbound.event_id)
        poll_at = self.clock.now() + self.tuning.watch_interval_s
        await self._replied(
            hold, turn, reply, last_error="task timeout",
            extra=[Op("ZADD", self.services.keys.watch, (poll_at, str(hold.conv)))],
        )
        return CONTINUE

    async def _replied(
        self,
        hold: Hold,
        turn: Turn,
        reply: Reply,
        *,
        extra: list[Op] | None = None,
        last_error: str = "",
        parts: tuple[Outgoing, ...] | None = None,
    ) -> None:
        """Record the answer and its rendering in one write: from here on OCS is never asked again."""
        if self.services.config.log_message_text:
            log.debug("reply (%s): %r", reply.kind, reply.text)  # an operator's opt-in (log_message_text)
        if parts is None:
            parts = tuple(self.services.adapters[hold.conv.channel].render(reply))
        changes: dict[str, Any] = {
            "state": TurnState.DELIVERING, "reply": reply, "parts": parts, "delivered": 0, "sending_part": -1,
            "attempts": 0, "failing_since": 0.0, "next_at": 0.0,
        }
        if last_error:
            changes["last_error"] = last_error
        turn, ops = self.services.ledger.update(hold.conv, turn, **changes)
        await self._write(hold, [*ops, *(extra or [])], turn=turn)

    async def _deliver(self, hold: Hold, turn: Turn) -> Outcome:
        conv = hold.conv
        adapter = self.services.adapters[conv.channel]
        last_route = hold.record.route if hold.record else {}
        route = dict(turn.inbound.route or last_route)
        ledger = self.services.ledger
        for index in range(turn.delivered, len(turn.parts)):
            if turn.sending_part != index:
                # Written before the call: after a crash, at most this one part can repeat.
                turn, ops = ledger.update(conv, turn, sending_part=index)
                await self._write(hold, ops, turn=turn)
            hold.lease.check()
            platform_id = await self._send_part(hold, adapter, {**route, "delivery_id": f"{turn.id}.{index}"}, turn.parts[index])
            following = index + 1 if index + 1 < len(turn.parts) else -1
            turn, ops = ledger.update(
                conv, turn, delivered=index + 1, sending_part=following,
                platform_ids=(*turn.platform_ids, platform_id), failing_since=0.0, attempts=0,
            )
            if index == 0:
                ops += self._first_part_ops(hold, turn)
            await self._write(hold, ops, turn=turn)
        if turn.working_at:
            try:
                await adapter.clear_working(route)
            except Exception:  # a leftover indicator must not fail a delivered turn
                log.warning("clear_working failed", exc_info=True)
        await self._finish(hold, turn)
        log.info("turn done (%d parts)", len(turn.parts))
        return CONTINUE

    def _first_part_ops(self, hold: Hold, turn: Turn) -> list[Op]:
        """The answer's first part is out: observe the reply delay (OCS done → sent) for this
        process's metric, and return the writes that record it with the user's wait (edge →
        sent) for the console's fleet-wide p50/p95, to ride with the delivery record (no round
        trip of their own). Bot-initiated messages had no one waiting."""
        now = self.clock.now()
        samples: dict[str, float] = {}
        if hold.ready_at is not None:
            samples["reply"] = max(now - hold.ready_at, 0.0)
            self.services.metrics.reply_delay_seconds.labels(self._bot_of(hold.conv)).observe(samples["reply"])
            hold.ready_at = None
        if turn.inbound.kind != InboundKind.PUSH and turn.inbound.received_at:
            samples["wait"] = max(now - turn.inbound.received_at, 0.0)
        return delay_ops(self.services.keys, samples, now=now)

    async def _finish(self, hold: Hold, turn: Turn, *, outcome: str | None = None) -> None:
        """Drop the turn and its inbox item; learn the next head in the same round trip.
        ``outcome`` labels ``ocsgw_turn_seconds`` (read from the turn when not given)."""
        conv = hold.conv
        ops = self.services.ledger.finish(conv, turn)
        record = hold.record
        if record is not None and record.session is not None and not record.gone:
            # Bot-initiated messages may follow; look for them no sooner than the interval.
            poll_at = self.clock.now() + self.tuning.watch_interval_s
            ops.append(Op("ZADD", self.services.keys.watch, ("NX", poll_at, str(conv))))
        ops.append(Op("LINDEX", self.services.keys.inbox(conv), (0,)))
        result = await self._write(hold, ops)
        head = result[-1]
        received = turn.inbound.received_at
        if received > 0:
            self.services.metrics.turn_seconds.labels(self._bot_of(conv), outcome or _turn_outcome(turn)).observe(
                max(self.clock.now() - received, 0.0)
            )
        hold.turn, hold.ready_at = None, None
        hold.head = head.decode() if isinstance(head, bytes) else (head or None)

    # -- failures -------------------------------------------------------------------------

    def _note_pause(self, conv: ConversationKey, exc: OCSRateLimited) -> None:
        """Say so when turns start waiting on a limit, at most once a minute per bot and kind:
        an operator must see a budget or WAF stall, but not once per turn."""
        key = f"{self.services.config.channels[conv.channel].bot}:{exc.scope}"
        now = time.monotonic()
        if now - self._paused_logged.get(key, float("-inf")) >= 60.0:
            self._paused_logged[key] = now
            log.warning("turns of bot %s are waiting on a request limit (%s): %s", key.split(":")[0], exc.scope, exc)

    def _pause(self, hold: Hold, seconds: float) -> Outcome:
        """Wait without counting an attempt (rate limits, budget, pacing)."""
        return self._wait_in_memory(hold, max(seconds, 0.05) * random.uniform(1.0, 1.2))

    def _backoff(self, attempts: int) -> float:
        base = min(self.tuning.backoff_base_s * 2 ** max(attempts - 1, 0), self.tuning.backoff_max_s)
        return base * random.uniform(0.5, 1.0)  # jitter: retries of many turns never march in step

    async def _retry(self, hold: Hold, exc: Exception) -> Outcome:
        turn = hold.turn
        assert turn is not None
        attempts = turn.attempts + 1
        if attempts >= self.tuning.max_attempts:
            return await self._fail(hold, turn, f"gave up after {attempts} attempts: {type(exc).__name__}: {exc}")
        asked = getattr(exc, "retry_after_s", None)
        delay = max(float(asked or 0.0), self._backoff(attempts))
        next_at = self.clock.now() + delay
        log.warning("retry in %.1fs: %s: %s", delay, type(exc).__name__, exc)
        turn, ops = self.services.ledger.update(
            hold.conv, turn, attempts=attempts, last_error=f"{type(exc).__name__}: {exc}"[:500], next_at=next_at
        )
        await self._write(hold, ops, turn=turn)
        return Outcome("wait", next_at)

    async def _retry_delivery(self, hold: Hold, exc: RetryLater) -> Outcome:
        """The platform or callback is down or throttling: back off exponentially (honouring
        its retry-after) within the channel's time budget, never by a count of attempts."""
        turn = hold.turn
        assert turn is not None
        if turn.state is not TurnState.DELIVERING:
            return await self._retry(hold, exc)
        now = self.clock.now()
        since = turn.failing_since or now
        budget = self.services.config.channels[hold.conv.channel].delivery_retry_budget_s
        if now - since > budget:
            return await self._fail(hold, turn, f"delivery failing for {now - since:.0f} s: {exc}")
        attempts = turn.attempts + 1
        delay = max(exc.retry_after_s, self._backoff(attempts))
        next_at = now + delay
        log.warning("delivery retry in %.1fs: %s", delay, exc)
        turn, ops = self.services.ledger.update(
            hold.conv, turn, attempts=attempts, failing_since=since, last_error=str(exc)[:500], next_at=next_at
        )
        await self._write(hold, ops, turn=turn)
        return Outcome("wait", next_at)

    async def _session_gone(self, hold: Hold, exc: SessionExpired) -> Outcome:
        """The session died while we waited (token expired, OCS forgot it): forget it and go
        again in a new one (the message is resent there: it never got an answer)."""
        turn = hold.turn
        assert turn is not None
        log.info("session gone mid-turn: %s", exc.code)
        attempts = turn.attempts + 1
        if attempts >= self.tuning.max_attempts:
            return await self._fail(hold, turn, f"session kept failing: {exc.code}")
        turn, ops = self.services.ledger.update(hold.conv, turn, state=TurnState.RECEIVED, last_error=str(exc), attempts=attempts)
        await self._write(hold, [*ops, *self.services.conversations.forget_session_ops(hold.conv)], turn=turn)
        if hold.record is not None:
            hold.record = replace(hold.record, session=None, cursor=None, user_messages=None)
        return CONTINUE

    async def _fail(self, hold: Hold, turn: Turn, error: str) -> Outcome:
        """Park the turn in the dead-letter store; tell the user once, if we still can."""
        with bound(turn=turn.id):  # also reached from fail_unexpected, outside the step
            log.error("dead-lettered: %s", error)
        if turn.dead_letter:
            await self._finish(hold, turn, outcome="failed")  # the notice itself failed: nothing more to do
            return CONTINUE
        stage = DeadLetterStage.DELIVERY if turn.state in (TurnState.REPLIED, TurnState.DELIVERING) else DeadLetterStage.OCS
        letter = await self._park(hold, turn, error, stage=stage)
        if stage is DeadLetterStage.DELIVERY or turn.inbound.kind is InboundKind.PUSH:
            await self._finish(hold, turn, outcome="failed")
            return CONTINUE
        notice = Reply(self.services.config.channels[hold.conv.channel].failure_notice, ReplyKind.NOTICE, in_reply_to=turn.inbound.event_id)
        turn, ops = self.services.ledger.update(hold.conv, turn, dead_letter=letter, last_error=error[:500])
        hold.turn = turn
        await self._replied(hold, turn, notice, extra=ops)
        return CONTINUE

    async def _park(self, hold: Hold, turn: Turn, error: str, *, stage: DeadLetterStage) -> str:
        hold.lease.check()
        letter = await self.services.dead_letters.park(
            hold.conv, turn.inbound_raw, error=error, ocs=turn.ocs_ids(), stage=stage,
            ledger={"turn": turn.id, "state": str(turn.state), "attempts": turn.attempts, "delivered": turn.delivered},
            reply=turn.reply if stage is DeadLetterStage.DELIVERY else None,
            parts=turn.parts[turn.delivered:] if stage is DeadLetterStage.DELIVERY else (),
        )
        return letter.id

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
        await self._write(hold, ops)
        hold.turn, hold.stale = None, True
        log.error("parked an unreadable inbox item")

    # -- helpers --------------------------------------------------------------------------

    async def _send_part(self, hold: Hold, adapter: ChannelAdapter[Any], route: Route, part: Outgoing) -> str:
        """``adapter.send``, counted by outcome where the engine meets the adapter's errors (the
        adapters stay unaware of metrics); the first part to arrive ends the reply delay."""
        metrics, channel = self.services.metrics, hold.conv.channel
        try:
            platform_id: str = await adapter.send(route, part)
        except PacingWait:
            metrics.pacing_waits.labels(channel).inc()
            raise
        except RetryLater as exc:
            metrics.platform_sends.labels(channel, "rate_limited" if exc.rate_limited else "error").inc()
            raise
        except RecipientGone:
            metrics.platform_sends.labels(channel, "gone").inc()
            raise
        except DeliveryRejected:
            metrics.platform_sends.labels(channel, "rejected").inc()
            raise
        except Exception:
            metrics.platform_sends.labels(channel, "error").inc()
            raise
        metrics.platform_sends.labels(channel, "ok").inc()
        return platform_id

    def _bot_of(self, conv: ConversationKey) -> str:
        channel = self.services.config.channels.get(conv.channel)
        return channel.bot if channel is not None else "-"

    def _wait_in_memory(self, hold: Hold, seconds: float) -> Outcome:
        """Step again in ``seconds``; only this process's memory records it (a new owner after a
        crash simply steps at once)."""
        at = self.clock.now() + seconds
        if hold.turn is not None:
            hold.turn = replace(hold.turn, next_at=at)
        return Outcome("wait", at)

    async def _show_working(self, hold: Hold, turn: Turn) -> Turn:
        adapter = self.services.adapters[hold.conv.channel]
        refresh = adapter.working_refresh_s
        now = self.clock.now()
        if turn.working_at and (refresh is None or now - turn.working_at < refresh - 0.05):
            return turn
        try:
            await adapter.show_working(turn.inbound.route)
        except Exception:  # best effort: a typing indicator never fails a turn
            log.debug("show_working failed", exc_info=True)
        if not turn.working_at:
            turn, ops = self.services.ledger.update(hold.conv, turn, working_at=now)
            await self._write(hold, ops, turn=turn)  # so a resumed turn still clears it
            return turn
        turn = replace(turn, working_at=now)
        hold.turn = turn
        return turn

    def _schedule(self, conv: ConversationKey) -> PollSchedule:
        bot = self.services.config.channels[conv.channel].bot
        cached = self._schedules.get(bot)
        if cached is None:
            cached = (PollSchedule(CompletionHistogram.empty(), max_gap_s=self.tuning.poll_max_s), float("-inf"))
            self._schedules[bot] = cached
        age = time.monotonic() - cached[1]
        stale = age > _SCHEDULE_REFRESH_S or (
            age > _SCHEDULE_MIN_AGE_S and self._learned.get(bot, 0) >= _SCHEDULE_REFRESH_AFTER
        )
        if stale and bot not in self._refreshing:
            self._learned[bot] = 0
            self._refreshing.add(bot)
            self._spawn(self._load_schedule(bot))
        return cached[0]

    async def _load_schedule(self, bot: str) -> None:
        try:
            histogram = await self.histograms.load(bot)
            self._schedules[bot] = (PollSchedule(histogram, max_gap_s=self.tuning.poll_max_s), time.monotonic())
        except Exception:  # the schedule we have keeps serving
            log.warning("could not load completion times of bot %s", bot, exc_info=True)
        finally:
            self._refreshing.discard(bot)

    def _learn(self, bot: str, low_s: float, high_s: float) -> None:
        # Off the reply's path: the user's answer never waits for the statistics.
        self._learned[bot] = self._learned.get(bot, 0) + 1
        self._spawn(self._record(bot, low_s, high_s))

    async def _record(self, bot: str, low_s: float, high_s: float) -> None:
        try:
            await self.histograms.record(bot, low_s, high_s)
        except Exception:  # one lost sample only blurs the schedule a little
            log.debug("could not record a completion time of bot %s", bot, exc_info=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
