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
from gateway.ocs.messages import MessageRole, OCSMessage, TaskStatus, parse_attachment
from gateway.store.clock import RedisClock
from gateway.store.dead_letters import DeadLetterStage, ReplayedParts
from gateway.store.fingerprints import delivered_ops
from gateway.store.lease import Op
from gateway.store.ledger import Turn, TurnState
from workers.closing import TurnCloser
from workers.context import WorkerServices
from workers.delivery import Deliverer
from workers.failures import FailurePolicy
from workers.hold import CONTINUE, IDLE, Hold, Outcome, wait_until
from workers.poll_schedule import PollSchedule
from workers.schedules import ScheduleCache
from workers.voice_notes import VoiceNotes, words_for_ocs

__all__ = ["TurnEngine", "reply_from_ocs"]

log = logging.getLogger("ocsgw.turns")

#: While a settled-but-unanswered send waits for its reply in the history, look this often.
_HISTORY_POLL_S = 1.0
_HISTORY_PAGE = 200
#: Tries of a platform file download that keeps failing before the text goes without it.
_ATTACHMENT_TRIES = 3


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
            await hold.refresh(self.services.ledger)
        turn = hold.turn
        if turn is None:
            if hold.head is None:
                return IDLE
            turn, ops = self.services.ledger.begin(hold.conv, hold.head, now=self.clock.now())
            await hold.write(ops, turn=turn)
        # The turn's ids on every line of the step: ours, the OCS client's, the adapter's SDK's.
        with bound(turn=turn.id, event_id=turn.inbound.event_id, task_id=turn.task_id):
            return await self._step_turn(hold, turn)

    async def fail_unexpected(self, hold: Hold, exc: BaseException) -> Outcome:
        """A step raised something nobody planned for: the failure policy decides."""
        return await self.failures.fail_unexpected(hold, exc)

    async def _step_turn(self, hold: Hold, turn: Turn) -> Outcome:
        now = self.clock.now()
        if turn.next_at > now + 0.005:
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
            reply = Reply(text=channel.reset_notice, kind=ReplyKind.NOTICE, in_reply_to=inbound.event_id)
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
        record = hold.record
        ocs = self.services.ocs_for(hold.conv.channel)
        session = record.session
        if session is not None and session.chatbot_id == ocs.bot.chatbot_id:
            return session
        adapter = self.services.adapters[hold.conv.channel]
        hold.lease.check()
        session = await ocs.start_session(
            remote_id=f"{adapter.kind}:{hold.conv.conversation}", name=turn.inbound.sender_name, channel=hold.conv.channel
        )
        record, ops = self.services.conversations.save_session(hold.conv, record, session)
        await hold.write(ops, record=record)
        log.info("started OCS session %s", session.session_id)
        return session

    async def _send(self, hold: Hold, turn: Turn, session: OCSSession) -> Outcome:
        """Upload the files and send the message, once. ``sending`` (with the count the session
        will reach) is recorded first, so a send that dies or gets no answer is settled from the
        history; an expired or vanished session is replaced and the message resent once."""
        conv = hold.conv
        ocs = self.services.ocs_for(conv.channel)
        ledger, conversations = self.services.ledger, self.services.conversations
        for attempt in (1, 2):
            ids, notes = await self._upload(hold, turn, session)
            inbound = turn.inbound
            text = words_for_ocs(inbound, turn) or ("[attachment]" if inbound.attachments else "(empty message)")
            if notes:
                text = "\n".join([text, *notes])
            base = await self._user_message_count(hold, session)
            turn, ops = ledger.update(
                conv, turn, state=TurnState.SENDING, sending_at=self.clock.now(), session_id=session.session_id,
                expect_count=base + 1, confirmed=False,
            )
            if attempt == 1:  # where replies go and that the user was active, with the first mark
                record, touch = conversations.touch(conv, hold.record, inbound.route, now=self.clock.now())
                await hold.write([*ops, *touch], turn=turn, record=record)
            else:
                await hold.write(ops, turn=turn)
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
                record, forget = conversations.forget_session(conv, hold.record)
                await hold.write([*ops, *forget], turn=turn, record=record)
                session = await self._ensure_session(hold, turn)
                continue
            except OCSAmbiguous as exc:
                # It left and no answer came back: OCS may be running it. Never send it again
                # blindly; the history will say (``_settle_sending``).
                log.warning("send without answer: %s; settling from the history", exc)
                return self.failures.wait_in_memory(hold, min(_HISTORY_POLL_S, self.tuning.reconcile_grace_s))
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
            return wait_until(now + first)
        raise AssertionError("unreachable")

    async def _user_message_count(self, hold: Hold, session: OCSSession) -> int:
        record = hold.record
        if record.user_messages is not None and record.session == session:
            return record.user_messages
        # A session from before the gateway counted: count its history once.
        history = await self._history(hold, session)
        count = sum(1 for m in history if m.role is MessageRole.USER)
        record, ops = self.services.conversations.count(hold.conv, record, count)
        await hold.write(ops, record=record)
        return count

    async def _upload(self, hold: Hold, turn: Turn, session: OCSSession) -> tuple[list[int], list[str]]:
        inbound = turn.inbound
        if not inbound.attachments:
            return [], []
        adapter = self.services.adapters[hold.conv.channel]
        files: list[tuple[str, bytes, str]] = []
        notes: list[str] = []
        for attachment in inbound.attachments:
            if attachment.spoken:
                continue  # heard, not uploaded (workers/voice_notes.py)
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
        when its worker picks the task up, docs/OCS.md §4.2, so a moment's absence proves nothing)."""
        conv = hold.conv
        now = self.clock.now()
        session = hold.record.session
        if session is None or session.session_id != turn.session_id:
            turn, ops = self.services.ledger.update(conv, turn, state=TurnState.RECEIVED)
            await hold.write(ops, turn=turn)
            return CONTINUE
        history = await self._history(hold, session)
        users = [i for i, m in enumerate(history) if m.role is MessageRole.USER]
        if turn.expect_count and len(users) >= turn.expect_count:
            after = users[turn.expect_count - 1] + 1
            answer = next((m for m in history[after:] if m.role is MessageRole.ASSISTANT), None)
            counted, count_ops = self.services.conversations.count(conv, hold.record, turn.expect_count)
            if answer is not None:
                reply = reply_from_ocs(answer, kind=ReplyKind.ANSWER, in_reply_to=turn.inbound.event_id)
                fingerprints = delivered_ops(self.services.keys.fingerprints(conv), answer, now=now)
                await self.closer.answer(hold, turn, reply, extra=[*count_ops, *fingerprints], record=counted)
                return CONTINUE
            if now - turn.sending_at > self.services.ocs_for(conv.channel).bot.task_timeout_s:
                return await self._too_slow(hold, turn)
            if not turn.confirmed:
                turn, ops = self.services.ledger.update(conv, turn, confirmed=True)
                await hold.write([*ops, *count_ops], turn=turn, record=counted)
            return self.failures.wait_in_memory(hold, _HISTORY_POLL_S)
        if now - turn.sending_at > self.tuning.reconcile_grace_s:
            log.warning("message never reached OCS: sending it again")
            turn, ops = self.services.ledger.update(conv, turn, state=TurnState.RECEIVED)
            await hold.write(ops, turn=turn)
            return CONTINUE
        return self.failures.wait_in_memory(hold, _HISTORY_POLL_S)

    async def _history(self, hold: Hold, session: OCSSession) -> list[OCSMessage]:
        ocs = self.services.ocs_for(hold.conv.channel)
        messages: list[OCSMessage] = []
        since: str | None = None
        while True:
            hold.lease.check()
            page = await ocs.session_messages(session, since=since, limit=_HISTORY_PAGE)
            messages.extend(page.messages)
            if not page.has_more or not page.messages:
                return messages
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
        result = await ocs.poll_task(session, turn.task_id)
        now = self.clock.now()
        elapsed = max(now - turn.sent_at, 0.0)
        # OCS looked at the task about halfway through our request: that is what the bot's
        # completion-time histogram learns from, not when the answer reached us.
        looked = max((asked + now) / 2 - turn.sent_at, 0.0)
        if result.status in (TaskStatus.COMPLETE, TaskStatus.ERROR):
            self.services.metrics.task_polls_per_turn.labels(ocs.name).observe(turn.polls + 1)
        if result.status is TaskStatus.COMPLETE and result.message is not None:
            # OCS finished somewhere between the last poll that saw it working and this one.
            hold.ready_at = turn.sent_at + (turn.last_poll_s + looked) / 2
            if looked - turn.last_poll_s <= self.tuning.poll_max_s:
                # Only a narrow interval says when the bot finished; a poll made late (a burst,
                # an adoption) would teach the schedule the gateway's delay, not the bot's.
                self.schedules.learn(ocs.name, turn.last_poll_s, looked)
            reply = reply_from_ocs(result.message, kind=ReplyKind.ANSWER, in_reply_to=turn.inbound.event_id)
            fingerprints = delivered_ops(self.services.keys.fingerprints(conv), result.message, now=now)
            await self.closer.answer(hold, turn, reply, extra=fingerprints)
            return CONTINUE
        if result.status is TaskStatus.ERROR:
            # OCS's error text is written for the end user (docs/OCS.md §4.3): it is the answer.
            reply = Reply(text=result.error or "", kind=ReplyKind.NOTICE, in_reply_to=turn.inbound.event_id)
            await self.closer.answer(hold, turn, reply, last_error=result.error or "")
            return CONTINUE
        if elapsed > ocs.bot.task_timeout_s:
            return await self._too_slow(hold, turn)
        turn = await self.delivery.show_working(hold, turn)
        wait = self._schedule(hold).next_delay(elapsed, turn.polls + 1)
        refresh = self.services.adapters[conv.channel].working_refresh_s
        if refresh:
            wait = min(wait, max(refresh - (now - turn.working_at), 0.05))  # keep the indicator alive
        # Nothing is written for a poll that saw no answer: after a crash the next owner simply
        # polls again. Only this process's memory moves on.
        hold.keep(replace(turn, polls=turn.polls + 1, last_poll_s=looked, next_at=now + wait))
        return wait_until(now + wait)

    async def _too_slow(self, hold: Hold, turn: Turn) -> Outcome:
        """Our own timeout (an unknown task polls as processing forever, docs/OCS.md §0.9): tell the user,
        and let the watch deliver the answer when it lands."""
        channel = self.services.config.channels[hold.conv.channel]
        reply = Reply(text=channel.slow_notice, kind=ReplyKind.NOTICE, in_reply_to=turn.inbound.event_id)
        poll_at = self.clock.now() + self.tuning.watch_interval_s
        await self.closer.answer(
            hold, turn, reply, last_error="task timeout",
            extra=[Op("ZADD", self.services.keys.watch, (poll_at, str(hold.conv)))],
        )
        return CONTINUE
