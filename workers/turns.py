"""The turn engine: the state machine of one conversation's turns, each step recorded before
the next.

The engine is driven by the turn runner (``workers/runner.py``), which owns the conversation
through its lease and calls ``step`` until the conversation is idle or must wait. A step does
one thing that can be done now and returns what to do next (``workers/hold.py``: continue, wait
until a time, or nothing left). Waiting is the runner's business (a timer on its event loop):
the engine never sleeps and never holds a thread.

A turn's states are the ones the ledger records (``gateway/store/ledger.py``)::

    received ──▶ sending ──▶ sent ──▶ delivering ──▶ (finished: the turn and its inbox item go)
        ▲           │          │
        └───────────┴──────────┘  not accepted, session gone, or never reached OCS: send again

* **received**: start (or reuse) the OCS session, upload the files, send. A reset and a
  replayed delivery skip OCS and go straight to delivering.
* **sending**: the send's outcome is unknown (a crash, an answer that never came back): settle
  it from the session's history by count, never by sending again blindly.
* **sent**: poll the task where the bot's learned completion times say the answer will be.
* **delivering**: hand the rendered parts to the platform (``workers/delivery.py``).

What happens when a step fails is the failure policy's (``workers/failures.py``); the writes that
end a turn are ``workers/closing.py``'s; each bot's poll schedule is ``workers/schedules.py``'s.
Every write goes through the lease (``Hold.write``), so a process that lost the conversation
can never overwrite the new owner.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import replace

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
    SessionEnded,
    SessionExpired,
    SpeechUnavailable,
)
from gateway.core.logs import bound
from gateway.core.models import (
    InboundKind,
    OCSSession,
    Reply,
    ReplyKind,
)
from gateway.ocs.budget import Priority
from gateway.ocs.client import OCSClient
from gateway.ocs.messages import (
    MessageRole,
    OCSMessage,
    SessionStatus,
    TaskStatus,
    parse_attachment,
    parse_timestamp,
)
from gateway.store.clock import RedisClock
from gateway.store.dead_letters import DeadLetterStage, ReplayedParts
from gateway.store.fingerprints import delivered_ops
from gateway.store.lease import Op
from gateway.store.ledger import Turn, TurnState
from workers import batches
from workers.closing import TurnCloser, bot_of, inbox_depth
from workers.context import WorkerServices
from workers.delivery import Deliverer
from workers.failures import FailurePolicy
from workers.hold import CONTINUE, IDLE, Hold, Outcome, wait_until
from workers.poll_schedule import PollSchedule
from workers.schedules import ScheduleCache
from workers.server_clock import completion_interval
from workers.voice_notes import VoiceNotes, heard_lines

__all__ = ["ORPHAN_TAG", "PROGRESS_POLL_S", "TurnEngine", "UNATTACHED_MARKER", "next_history_read", "reply_from_ocs"]

log = logging.getLogger("ocsgw.turns")

#: An uncertain send's history is read this long after it began, then after gaps that double.
_FIRST_READ_S = 0.5
#: The longest gap between the history reads that wait for a confirmed send's reply, at least
#: (the task polls' own ``poll_max_s`` when that is longer).
_ANSWER_GAP_S = 1.0
#: Timers fire late rather than early; a read this close to a deadline is at it.
_AT_DEADLINE_S = 0.01
_HISTORY_PAGE = 200
#: The tag an orphan session gets in OCS (a start whose answer was lost made it; nobody can
#: use it): operators find them with ``GET /api/sessions/?tags=gateway-orphan``.
ORPHAN_TAG = "gateway-orphan"
#: Tries of a platform file download that keeps failing before the text goes without it.
_ATTACHMENT_TRIES = 3
#: While OCS's progress line shows, the task is polled at least this often (OCS changes a task's
#: line at most every 5 s, docs/OCS.md §4.3).
PROGRESS_POLL_S = 5.0
#: What OCS is told of a file the user sent that could not be attached (the user is told why).
UNATTACHED_MARKER = "[the user sent a file that could not be attached]"


def next_history_read(sending_at: float, now: float, *, deadline_s: float, max_gap_s: float) -> float:
    """When to read an uncertain send's history next (shared clock): ``sending_at`` plus 0.5,
    1.5, 3.5, 7.5 … s (gaps doubling from 0.5 s, at most ``max_gap_s``), never later than
    ``sending_at + deadline_s``, where the last read lands. A read costs an OCS request from
    the session's 300 / 5 min; what it can find (a message that arrived, an answer) grows
    rarer the longer it has not come, so ``log2(deadline / 0.5) + 2`` reads settle it. The
    schedule hangs on ``sending_at`` alone: an owner that adopts the turn goes on with it."""
    elapsed = now - sending_at
    point, gap = _FIRST_READ_S, _FIRST_READ_S
    while point <= elapsed + _AT_DEADLINE_S and point < deadline_s:
        gap = min(gap * 2, max(max_gap_s, _FIRST_READ_S))
        point += gap
    return sending_at + min(point, deadline_s)


def reply_from_ocs(message: OCSMessage, *, kind: ReplyKind, in_reply_to: str | None) -> Reply:
    """A reply from an OCS message (coerced once, where the client parsed it)."""
    return Reply(text=message.content, kind=kind, attachments=message.attachments, in_reply_to=in_reply_to)


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
        self.schedules = ScheduleCache(services.redis, services.keys, max_gap_s=tuning.poll_max_s)
        self.closer = TurnCloser(services, tuning, clock)
        self.delivery = Deliverer(services, clock, self.closer)
        self.failures = FailurePolicy(services, tuning, clock, self.closer)
        self.voice = VoiceNotes(services, self.delivery)

    # -- the step -------------------------------------------------------------------------

    async def step(self, hold: Hold) -> Outcome:
        if not hold.loaded:
            await hold.refresh(self.services.ledger, depth=inbox_depth(self.services, hold.conv))
        turn = hold.turn
        if turn is None:
            if not hold.queue:
                return IDLE
            now = self.clock.now()
            channel = self.services.config.channels.get(hold.conv.channel)
            if channel is None:
                plan = batches.Plan(hold.queue[:1])
            else:
                plan = batches.plan(hold.queue, channel.coalesce, now=now)
            if plan.wait_until is not None:
                return wait_until(plan.wait_until)  # a quiet window: the rest of a burst may join
            turn, ops = self.services.ledger.begin(hold.conv, plan.items[0], batch=plan.items[1:], now=now)
            await hold.write(ops, turn=turn)
        # The turn's ids on every line of the step: ours, the OCS client's, the adapter's SDK's.
        with bound(turn=turn.id, event_id=turn.inbound.event_id, task_id=turn.task_id):
            return await self._step_turn(hold, turn)

    async def fail_unexpected(self, hold: Hold, exc: BaseException) -> Outcome:
        """A step raised something nobody planned for: the failure policy decides."""
        return await self.failures.fail_unexpected(hold, exc)

    async def _step_turn(self, hold: Hold, turn: Turn) -> Outcome:
        now = self.clock.now()
        woken = hold.take_wake()  # OCS answers again: its backoff is over
        if turn.next_at > now + 0.005 and not woken:
            return wait_until(turn.next_at)  # woken early: wait again, nothing lost
        conv = hold.conv
        failures = self.failures
        if conv.channel not in self.services.adapters:
            await failures.park(hold, turn, f"channel {conv.channel!r} is no longer configured", stage=DeadLetterStage.CONFIG)
            await self.closer.finish(hold, turn, outcome="failed")
            return CONTINUE
        try:
            outcome = await self._dispatch(hold, turn)
        except OCSRateLimited as exc:
            # OCS, its WAF or our own budget asked us to wait: a pause, not a failure.
            failures.note_pause(conv, exc)
            outcome = failures.pause(hold, exc.retry_after_s)
        except PacingWait as exc:
            outcome = failures.pause(hold, exc.retry_after_s)
        except RetryLater as exc:
            outcome = await failures.retry_delivery(hold, hold.turn or turn, exc)
        except (OCSUnavailable, SpeechUnavailable) as exc:
            outcome = await failures.retry(hold, hold.turn or turn, exc)
        except SessionExpired as exc:
            outcome = await failures.session_gone(hold, hold.turn or turn, exc)
        except RecipientGone as exc:
            outcome = await failures.recipient_gone(hold, hold.turn or turn, exc.reason)
        except (OCSRejected, OCSAuthFailed, DeliveryRejected) as exc:
            outcome = await failures.fail(hold, hold.turn or turn, f"{type(exc).__name__}: {exc}")
        hold.failures = 0
        return outcome

    async def _dispatch(self, hold: Hold, turn: Turn) -> Outcome:
        record = hold.record
        if record.gone:
            if turn.inbound.kind is not InboundKind.PUSH and turn.state is TurnState.RECEIVED:
                # They wrote to us again (a callback that came back, a re-invited app): reachable.
                record, ops = self.services.conversations.set_gone(hold.conv, record, False)
                await hold.write(ops, record=record)
            else:
                await self.closer.finish(hold, turn, outcome="gone")  # no more sends to a user who blocked us
                return CONTINUE
        if turn.state is TurnState.RECEIVED:
            return await self._start(hold, turn)
        if turn.state is TurnState.SENDING:
            return await self._settle_sending(hold, turn)
        if turn.state is TurnState.SENT:
            return await self._poll(hold, turn)
        return await self.delivery.deliver(hold, turn)

    def _schedule(self, hold: Hold) -> PollSchedule:
        return self.schedules.schedule(self.services.config.channels[hold.conv.channel].bot)

    # -- states ---------------------------------------------------------------------------

    async def _start(self, hold: Hold, turn: Turn) -> Outcome:
        conv, inbound = hold.conv, turn.inbound
        channel = self.services.config.channels[conv.channel]
        if inbound.kind is InboundKind.PUSH:
            attachments = tuple(parse_attachment(a) for a in inbound.context.get("attachments", ()) if isinstance(a, Mapping))
            reply = Reply(text=inbound.text, kind=ReplyKind.PUSH, attachments=attachments)
            # A replayed delivery carries the parts that were never delivered: only those go out.
            replayed = ReplayedParts.from_context(inbound.context)
            await self.closer.answer(hold, turn, reply, parts=replayed.parts if replayed else None)
            return CONTINUE
        if inbound.kind is InboundKind.RESET:
            await self._reset(hold, turn)
            reply = Reply(text=channel.reset_notice, kind=ReplyKind.NOTICE, in_reply_to=turn.last.event_id)
            await self.closer.answer(hold, turn, reply)
            return CONTINUE
        turn, unheard = await self.voice.hear(hold, turn)  # voice notes become words first
        if unheard is not None:  # a voice note alone that could not be heard: nothing for OCS
            await self.closer.answer(hold, turn, unheard)
            return CONTINUE
        session = await self._ensure_session(hold, turn)
        turn = await self.delivery.show_working(hold, turn)
        return await self._send(hold, turn, session)

    async def _reset(self, hold: Hold, turn: Turn) -> None:
        record = hold.record
        if record.session is not None:
            hold.lease.check()
            try:
                await self.services.ocs_for(hold.conv.channel).end_session(record.session.session_id)
            except OCSRejected as exc:
                # Whatever OCS thinks of it, the user asked for a fresh start: forget it here.
                log.warning("could not end the OCS session: %s", exc)
        conversations = self.services.conversations
        touched, touch = conversations.touch(hold.conv, record, turn.inbound.route, now=self.clock.now())
        forgotten, forget = conversations.forget_session(hold.conv, touched)
        await hold.write([*forget, *touch], record=forgotten)
        await self.services.adapters[hold.conv.channel].forget_conversation(turn.inbound.route)

    async def _ensure_session(self, hold: Hold, turn: Turn) -> OCSSession:
        """The conversation's session, or a new one. A start is labelled and its intent recorded
        first (OCS has no idempotency key): one whose answer was lost (a crash, a cut connection)
        leaves the intent behind, and the next start first looks for the session it made."""
        record = hold.record
        ocs = self.services.ocs_for(hold.conv.channel)
        session = record.session
        if session is not None and session.chatbot_id == ocs.bot.chatbot_id:
            return session
        adapter = self.services.adapters[hold.conv.channel]
        remote_id = f"{adapter.kind}:{hold.conv.conversation}"
        if record.start_label:
            await self._look_for_orphan(hold, ocs, remote_id)
        conversations = self.services.conversations
        record, ops = conversations.intend_start(hold.conv, hold.record, label=secrets.token_hex(4), now=self.clock.now())
        await hold.write(ops, record=record)
        hold.lease.check()
        try:
            session = await ocs.start_session(
                remote_id=remote_id, name=turn.inbound.sender_name, channel=hold.conv.channel, label=record.start_label
            )
        except OCSAmbiguous:
            raise  # OCS may have made it: the intent stays, and the next try looks for it
        except (OCSRateLimited, OCSRejected, OCSAuthFailed, OCSUnavailable):
            # Refused (by OCS or our budget) or never reached OCS: no session to look for later.
            record, ops = conversations.drop_intent(hold.conv, hold.record)
            await hold.write(ops, record=record)
            raise
        record, ops = conversations.save_session(hold.conv, hold.record, session)
        await hold.write(ops, record=record)
        log.info("started OCS session %s", session.session_id)
        return session

    async def _look_for_orphan(self, hold: Hold, ocs: OCSClient, remote_id: str) -> None:
        """A start's answer was lost: did OCS make that session? Its token was only in the lost
        answer (no call returns it, docs/OCS.md §2.5), so it cannot be used; it is tagged ``ORPHAN_TAG`` for
        operators, and the turn starts another. Looking costs one or two requests of the sessions
        API, only after a loss; it never blocks the start (a failed look is only logged)."""
        record = hold.record
        label = record.start_label
        if not ocs.can_manage_sessions:
            log.warning("a session start's answer was lost: OCS may hold an unused session (remote id %s#%s)", remote_id, label)
            return
        hold.lease.check()
        try:
            found = await ocs.find_labelled_session(remote_id, label, created_after=record.start_at)
        except (OCSRejected, OCSUnavailable) as exc:
            log.warning("could not look for the session of a start whose answer was lost (label %s): %s", label, exc)
            return
        if found is None:
            log.info("the start whose answer was lost (label %s) made no session", label)
            return
        log.warning("orphan OCS session %s: made by a start whose answer was lost (label %s)", found.session_id, label)
        if ORPHAN_TAG in found.tags:
            return
        hold.lease.check()
        try:
            await ocs.tag_session(found.session_id, [ORPHAN_TAG])
        except (OCSRejected, OCSUnavailable) as exc:
            log.warning("could not tag orphan OCS session %s: %s", found.session_id, exc)

    async def _send(self, hold: Hold, turn: Turn, session: OCSSession) -> Outcome:
        """Upload the files and send the message, once. ``sending`` (with the count the session
        will reach) is recorded first, so a send that dies or gets no answer is settled from the
        history; an expired or vanished session is replaced and the message resent once."""
        conv = hold.conv
        ocs = self.services.ocs_for(conv.channel)
        ledger, conversations = self.services.ledger, self.services.conversations
        for attempt in (1, 2):
            try:
                ids, unattached = await self._upload(hold, turn, session)
                inbound, combined = turn.last, batches.combine(turn.inbounds)
                # OCS gets the user's words, and of a file it could not get only that there was one:
                # why it failed is the user's business (a notice before the answer), not the bot's.
                combined = batches.combine(turn.inbounds, heard=heard_lines(turn))
                text = combined.text or ("[attachment]" if ids else "" if unattached else "(empty message)")
                if unattached:
                    text = "\n".join(part for part in (text, UNATTACHED_MARKER) if part)
                base = await self._user_message_count(hold, session)
                turn, ops = ledger.update(
                    conv, turn, state=TurnState.SENDING, sending_at=self.clock.now(), session_id=session.session_id,
                    expect_count=base + 1, confirmed=False, unattached=tuple(unattached),
                )
                if attempt == 1:  # where replies go and that the user was active, with the first mark
                    record, touch = conversations.touch(conv, hold.record, inbound.route, now=self.clock.now())
                    await hold.write([*ops, *touch], turn=turn, record=record)
                else:
                    await hold.write(ops, turn=turn)
                if self.services.config.log_message_text:
                    log.debug("message to OCS: %r", text)  # an operator's opt-in (log_message_text)
                hold.lease.check()
                task_id = await ocs.send_message(session, text, attachment_ids=ids, context=inbound.context)
            except SessionExpired as exc:
                # Expired, forgotten, or finished by OCS (400 "Session has ended"): in each case
                # OCS did not take the message, so it goes into a new session, once.
                if attempt == 2:
                    raise
                log.info("session %s gone (%s): new session, resending", session.session_id, exc.code)
                turn, ops = ledger.update(conv, turn, state=TurnState.RECEIVED)
                record, forget = conversations.forget_session(conv, hold.record)
                await hold.write([*ops, *forget], turn=turn, record=record)
                session = await self._ensure_session(hold, turn)
                continue
            except OCSAmbiguous as exc:
                # It left and no answer came back: OCS may be running it. Never send it again
                # blindly; the history will say (``_settle_sending``).
                log.warning("send without answer: %s; settling from the history", exc)
                now = self.clock.now()
                first = next_history_read(turn.sending_at, now, deadline_s=self.tuning.reconcile_grace_s, max_gap_s=float("inf"))
                return self.failures.wait_in_memory(hold, max(first - now, 0.0))
            except (OCSUnavailable, OCSRateLimited, OCSRejected):
                # Not accepted: back to "received", so the retry sends instead of searching.
                turn, ops = ledger.update(conv, turn, state=TurnState.RECEIVED)
                await hold.write(ops, turn=turn)
                raise
            now = self.clock.now()
            first = self._schedule(hold).next_delay(0.0, 0)
            turn, ops = ledger.update(
                conv, turn, state=TurnState.SENT, task_id=task_id, sent_at=now, attempts=0, polls=0,
                last_poll_s=0.0, next_at=now + first,
            )
            record, count = conversations.count(conv, hold.record, base + 1)
            await hold.write([*ops, *count], turn=turn, record=record)
            self.services.metrics.messages_per_turn.labels(bot_of(self.services, conv)).observe(len(turn.items))
            return wait_until(now + first)
        raise AssertionError("unreachable")

    async def _user_message_count(self, hold: Hold, session: OCSSession) -> int:
        record = hold.record
        if record.user_messages is not None and record.session == session:
            return record.user_messages
        # A session from before the gateway counted: count its history once.
        history, status = await self._history(hold, session)
        if status is SessionStatus.ENDED:
            raise SessionEnded()  # OCS would refuse the message: a new session, before sending
        count = sum(1 for m in history if m.role is MessageRole.USER)
        record, ops = self.services.conversations.count(hold.conv, record, count)
        await hold.write(ops, record=record)
        return count

    async def _upload(self, hold: Hold, turn: Turn, session: OCSSession) -> tuple[list[int], list[str]]:
        """Fetch the turn's files from the platform and upload them to the session: the OCS file
        ids, and the names of the files that could not be attached (the words go without them)."""
        attachments = batches.combine(turn.inbounds).attachments
        if not attachments:
            return [], []
        adapter = self.services.adapters[hold.conv.channel]
        files: list[tuple[str, bytes, str]] = []
        unattached: list[str] = []
        for attachment, inbound in attachments:
            if attachment.spoken:
                continue  # heard, not uploaded (workers/voice_notes.py)
            try:
                got = await adapter.download(attachment, inbound.route)
            except AttachmentUnavailable as exc:
                log.info("attachment %s not attached: %s", attachment.name, exc.reason)
                unattached.append(attachment.name)
                continue
            except RetryLater as exc:
                if turn.attempts + 1 < _ATTACHMENT_TRIES:
                    raise  # a passing blip: try the whole step again shortly
                # Still down: the words go through without the file rather than not at all.
                log.warning("attachment still unavailable: %s", exc)
                unattached.append(attachment.name)
                continue
            files.append((got.name, got.data, got.content_type))
        if not files:
            return [], unattached
        hold.lease.check()
        try:
            return await self.services.ocs_for(hold.conv.channel).upload(session, files), unattached
        except OCSRejected as exc:
            # A file type OCS refuses must not sink the words that came with it. What OCS said is
            # for the operator's log, never the bot's input.
            log.warning("OCS did not accept the attachments: %s", exc)
            return [], [*unattached, *(name for name, _, _ in files)]

    async def _settle_sending(self, hold: Hold, turn: Turn) -> Outcome:
        """A send whose outcome is unknown (the worker died, or the answer never came back):
        count the user messages in the session's history. ``expect_count`` of them means OCS
        has it (its reply is the first assistant message after it); fewer means it has not
        arrived, and after ``reconcile_grace_s`` it is sent again (OCS writes the user message
        when its worker picks the task up, docs/OCS.md §4.2, so a moment's absence proves nothing)."""
        conv = hold.conv
        # The history is read at gaps that double (``next_history_read``), each read booked in
        # the request budget like any OCS call: a handful of reads settle it, not one a second.
        # A session OCS finished meanwhile (``session_status: ended``) is forgotten once the
        # turn is settled: the resend, and the next message, go to a new one.
        now = self.clock.now()
        session = hold.record.session
        if session is None or session.session_id != turn.session_id:
            turn, ops = self.services.ledger.update(conv, turn, state=TurnState.RECEIVED)
            await hold.write(ops, turn=turn)
            return CONTINUE
        history, status = await self._history(hold, session)
        ended = status is SessionStatus.ENDED
        users = [i for i, m in enumerate(history) if m.role is MessageRole.USER]
        elapsed = now - turn.sending_at
        if turn.expect_count and len(users) >= turn.expect_count:
            after = users[turn.expect_count - 1] + 1
            answer = next((m for m in history[after:] if m.role is MessageRole.ASSISTANT), None)
            counted, count_ops = self.services.conversations.count(conv, hold.record, turn.expect_count)
            if answer is not None:
                reply = reply_from_ocs(answer, kind=ReplyKind.ANSWER, in_reply_to=turn.last.event_id)
                if ended:
                    forgotten, forget = self.services.conversations.forget_session(conv, hold.record)
                    await self.closer.answer(hold, turn, reply, extra=forget, record=forgotten)
                    return CONTINUE
                fingerprints = delivered_ops(self.services.keys.fingerprints(conv), answer, now=now)
                await self.closer.answer(hold, turn, reply, extra=[*count_ops, *fingerprints], record=counted)
                return CONTINUE
            timeout = self.services.ocs_for(conv.channel).bot.task_timeout_s
            if elapsed > timeout:
                return await self._too_slow(hold, turn)
            if not turn.confirmed:
                turn, ops = self.services.ledger.update(conv, turn, confirmed=True)
                await hold.write([*ops, *count_ops], turn=turn, record=counted)
            gap = max(self.tuning.poll_max_s, _ANSWER_GAP_S)
            at = next_history_read(turn.sending_at, now, deadline_s=timeout + _FIRST_READ_S, max_gap_s=gap)
            return self.failures.wait_in_memory(hold, max(at - now, 0.0))
        grace = self.tuning.reconcile_grace_s
        if elapsed >= grace - _AT_DEADLINE_S:
            log.warning("message never reached OCS: sending it again")
            turn, ops = self.services.ledger.update(conv, turn, state=TurnState.RECEIVED)
            if ended:
                log.info("session %s was finished by OCS: the message goes to a new one", session.session_id)
                record, forget = self.services.conversations.forget_session(conv, hold.record)
                await hold.write([*ops, *forget], turn=turn, record=record)
            else:
                await hold.write(ops, turn=turn)
            return CONTINUE
        at = next_history_read(turn.sending_at, now, deadline_s=grace, max_gap_s=float("inf"))
        return self.failures.wait_in_memory(hold, max(at - now, 0.0))

    async def _history(self, hold: Hold, session: OCSSession) -> tuple[list[OCSMessage], SessionStatus]:
        """The session's whole history, and its status as the last page said."""
        ocs = self.services.ocs_for(hold.conv.channel)
        messages: list[OCSMessage] = []
        since: str | None = None
        while True:
            hold.lease.check()
            page = await ocs.session_messages(session, since=since, limit=_HISTORY_PAGE)
            messages.extend(page.messages)
            if not page.has_more or not page.messages:
                return messages, page.session_status
            since = page.messages[-1].created_at

    async def _poll(self, hold: Hold, turn: Turn) -> Outcome:
        conv = hold.conv
        session = hold.record.session
        if session is None or session.session_id != turn.session_id:
            turn, ops = self.services.ledger.update(conv, turn, state=TurnState.RECEIVED)
            await hold.write(ops, turn=turn)
            return CONTINUE
        ocs = self.services.ocs_for(conv.channel)
        hold.lease.check()
        asked = self.clock.now()
        # A poll before the schedule's is made only to show progress: it is the first to yield.
        early = hold.schedule_at is not None and asked < hold.schedule_at - 0.005
        try:
            result = await ocs.poll_task(session, turn.task_id, priority=Priority.BACKGROUND if early else Priority.WAITING)
        except OCSRateLimited:
            if not early or hold.schedule_at is None:
                raise
            # The budget is short: progress goes first; the schedule's own poll comes as planned.
            at, hold.schedule_at = hold.schedule_at, None
            hold.keep(replace(turn, next_at=at))
            return wait_until(at)
        now = self.clock.now()
        elapsed = max(now - turn.sent_at, 0.0)
        # OCS looked at the task about halfway through our request: that is what the bot's
        # completion-time histogram learns from, not when the answer reached us.
        looked_at = (asked + now) / 2
        looked = max(looked_at - turn.sent_at, 0.0)
        server_clock = self.schedules.server_clock(ocs.name)
        self.schedules.saw_round_trip(ocs.name, now - asked)
        if result.served_at is not None:
            server_clock.saw_date(result.served_at, looked_at)
        if result.status in (TaskStatus.COMPLETE, TaskStatus.ERROR):
            self.services.metrics.task_polls_per_turn.labels(ocs.name).observe(turn.polls + 1)
        if result.status is TaskStatus.COMPLETE and result.message is not None:
            # OCS finished somewhere between the last poll that saw it working and this one; its
            # own stamp on the reply, read through its clock's offset, says where.
            stamp = parse_timestamp(result.message.created_at) if result.message.created_at else None
            if stamp is not None and not server_clock.saw_completion(
                stamp, sending_at=turn.sending_at or turn.sent_at, looked_at=looked_at
            ):
                stamp = None  # contradicts OCS's own Date: not believed
            low, high = completion_interval(
                turn.last_poll_s, looked, created_at_s=stamp, sent_at=turn.sent_at, window=server_clock.window()
            )
            hold.ready_at = turn.sent_at + (low + high) / 2
            if high - low <= self.tuning.poll_max_s:
                # Only a narrow interval says when the bot finished; a poll made late (a burst,
                # an adoption) would teach the schedule the gateway's delay, not the bot's,
                # unless OCS's stamp narrowed it.
                stamped = None if stamp is None else (stamp - turn.sent_at, turn.last_poll_s, looked)
                self.schedules.learn(ocs.name, low, high, stamped=stamped)
            reply = reply_from_ocs(result.message, kind=ReplyKind.ANSWER, in_reply_to=turn.last.event_id)
            fingerprints = delivered_ops(self.services.keys.fingerprints(conv), result.message, now=now)
            await self.closer.answer(hold, turn, reply, extra=fingerprints)
            return CONTINUE
        if result.status is TaskStatus.ERROR:
            # OCS's error text is written for the end user (docs/OCS.md §4.3): it is the answer.
            reply = Reply(text=result.error or "", kind=ReplyKind.NOTICE, in_reply_to=turn.last.event_id)
            await self.closer.answer(hold, turn, reply, last_error=result.error or "")
            return CONTINUE
        if elapsed > ocs.bot.task_timeout_s:
            return await self._too_slow(hold, turn)
        if result.progress:
            turn, shown = await self.delivery.show_progress(hold, turn, result.progress)
        else:
            turn, shown = await self.delivery.show_working(hold, turn), False
        wait = self._schedule(hold).next_delay(elapsed, turn.polls + 1)
        refresh = self.services.adapters[conv.channel].working_refresh_s
        if refresh:
            wait = min(wait, max(refresh - (now - turn.working_at), 0.05))  # keep the indicator alive
        hold.schedule_at = now + wait
        if shown and wait > PROGRESS_POLL_S:
            # While a progress line shows, look again as soon as OCS may have changed it (docs/OCS.md
            # §4.3: at most every 5 s), not only when the learned schedule would: a long answer
            # shows its lines as they come. Those polls yield first when the budget is short.
            wait = PROGRESS_POLL_S
        # Nothing is written for a poll that saw no answer: after a crash the next owner simply
        # polls again. Only this process's memory moves on.
        hold.keep(replace(turn, polls=turn.polls + 1, last_poll_s=looked, next_at=now + wait))
        return wait_until(now + wait)

    async def _too_slow(self, hold: Hold, turn: Turn) -> Outcome:
        """Our own timeout (an unknown task polls as processing forever, docs/OCS.md §0.9): tell the user,
        and let the watch deliver the answer when it lands."""
        channel = self.services.config.channels[hold.conv.channel]
        reply = Reply(text=channel.slow_notice, kind=ReplyKind.NOTICE, in_reply_to=turn.last.event_id)
        poll_at = self.clock.now() + self.tuning.watch_interval_s
        await self.closer.answer(
            hold, turn, reply, last_error="task timeout",
            extra=[Op("ZADD", self.services.keys.watch, (poll_at, str(hold.conv)))],
        )
        return CONTINUE
