"""The turn engine: moves one conversation forward, one recorded step at a time.

A turn never holds a thread while OCS thinks. Each call of ``advance`` takes the conversation's
lease, performs the steps that can run now (start the session, upload, send, poll once,
deliver), records each in the ledger, and when it must wait it records when (``next_at``),
schedules itself for then, and returns. So one worker process keeps thousands of turns in
flight: a waiting turn is a delayed message in Redis and a hash, nothing more.

Any number of ``advance`` messages may exist for a conversation (the edge sends one per
message, the sweeper one per stall, Dramatiq redelivers after a crash): the lease lets one run
at a time, and a call that arrives before ``next_at`` does nothing, so they never multiply.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Literal, Mapping

from gateway.config import WorkerTuning
from gateway.errors import (
    AttachmentUnavailable,
    DeliveryRejected,
    OCSAuthFailed,
    OCSRateLimited,
    OCSRejected,
    OCSUnavailable,
    RecipientGone,
    RetryLater,
    SessionExpired,
)
from gateway.fingerprints import mark_delivered
from gateway.keys import as_text
from gateway.ledger import Turn, TurnState
from gateway.lease import Lease
from gateway.models import ConversationKey, InboundKind, Reply, ReplyAttachment, ReplyKind
from gateway.ocs_client import OCSSession
from gateway.services import Services

__all__ = ["TurnEngine", "reply_from_ocs"]

log = logging.getLogger("ocsgw.turns")

#: A step is bounded: after this many steps in one call the conversation yields its thread.
_MAX_STEPS = 24
#: A message whose send was interrupted is looked for in the history for this long before it
#: is sent again (OCS writes the user message when its worker picks the task up, §4.2).
_SENDING_GRACE_S = 20.0


@dataclass(frozen=True, slots=True)
class _Outcome:
    kind: Literal["continue", "wait", "idle"]
    at: float = 0.0
    schedule: bool = True


_CONTINUE = _Outcome("continue")


def reply_from_ocs(message: Mapping[str, Any], *, kind: ReplyKind, in_reply_to: str | None) -> Reply:
    attachments = tuple(
        ReplyAttachment(
            name=str(a.get("name", "file")),
            content_type=str(a.get("content_type", "application/octet-stream")),
            size=int(a.get("size") or 0),
            content_url=str(a.get("content_url", "")),
        )
        for a in message.get("attachments") or ()
    )
    return Reply(text=str(message.get("content") or ""), kind=kind, attachments=attachments, in_reply_to=in_reply_to)


class TurnEngine:
    """Parameters:
    services: the process's services.
    tuning: pacing and retry settings.
    schedule: enqueues ``advance(conv)`` after a delay in seconds (a Dramatiq delayed message).
    """

    def __init__(self, services: Services, tuning: WorkerTuning, schedule: Callable[[ConversationKey, float], None]) -> None:
        self.s = services
        self.tuning = tuning
        self.schedule = schedule

    async def advance(self, conv: ConversationKey) -> None:
        lease = await Lease.acquire(self.s.redis, self.s.keys.lease(conv), ttl_s=self.tuning.lease_ttl_s)
        if lease is None:
            return  # another worker is on this conversation; it reschedules as needed
        idle = False
        try:
            for _ in range(_MAX_STEPS):
                outcome = await self._step(conv, lease)
                if outcome.kind == "continue":
                    continue
                if outcome.kind == "idle":
                    idle = True
                    await self.s.redis.zrem(self.s.keys.active, str(conv))
                else:
                    await self.s.redis.zadd(self.s.keys.active, {str(conv): outcome.at})
                    if outcome.schedule:
                        self.schedule(conv, max(outcome.at - time.time(), 0.0))
                break
            else:
                self.schedule(conv, 0.0)  # more queued work: let other conversations in first
        finally:
            await lease.release()
        if idle and await self.s.redis.llen(self.s.keys.inbox(conv)):
            self.schedule(conv, 0.0)  # a message arrived between our last look and the release

    # -- one step -------------------------------------------------------------------------

    async def _step(self, conv: ConversationKey, lease: Lease) -> _Outcome:
        turn = await self.s.ledger.load(conv)
        if turn is None:
            head = await self.s.redis.lindex(self.s.keys.inbox(conv), 0)
            if head is None:
                return _Outcome("idle")
            turn = await self.s.ledger.begin(conv, as_text(head))
        now = time.time()
        if turn.next_at > now + 0.005:
            return _Outcome("wait", turn.next_at, schedule=False)
        if conv.channel not in self.s.adapters:
            await self._park(conv, turn, f"channel {conv.channel!r} is no longer configured")
            await self.s.ledger.finish(conv, turn)
            return _CONTINUE
        try:
            return await self._dispatch(conv, turn, lease)
        except (OCSUnavailable, OCSRateLimited, RetryLater) as exc:
            return await self._retry(conv, turn, exc)
        except SessionExpired as exc:
            # The token died while we waited for the reply: start over in a new session.
            log.info("session expired mid-turn conv=%s turn=%s", conv, turn.id)
            await self.s.conversations.forget_session(conv)
            await self.s.ledger.update(conv, turn, state=TurnState.RECEIVED, last_error=str(exc), attempts=turn.attempts + 1)
            return _CONTINUE
        except RecipientGone as exc:
            log.info("recipient gone conv=%s reason=%s", conv, exc.reason)
            await self.s.conversations.set_gone(conv, True)
            await self.s.ledger.finish(conv, turn)
            return _CONTINUE
        except (OCSRejected, OCSAuthFailed, DeliveryRejected) as exc:
            return await self._fail(conv, turn, f"{type(exc).__name__}: {exc}")

    async def _dispatch(self, conv: ConversationKey, turn: Turn, lease: Lease) -> _Outcome:
        record = await self.s.conversations.load(conv)
        if record.gone:
            if turn.inbound.kind is not InboundKind.PUSH and turn.state is TurnState.RECEIVED:
                # They wrote to us again (a callback that came back, a re-invited app): reachable.
                await self.s.conversations.set_gone(conv, False)
            else:
                # No more sends to a user who blocked us (or a removed app); the message is dropped.
                await self.s.ledger.finish(conv, turn)
                return _CONTINUE
        if turn.state is TurnState.RECEIVED:
            return await self._start(conv, turn, record.session)
        if turn.state is TurnState.SENDING:
            return await self._resume_sending(conv, turn, record.session)
        if turn.state is TurnState.SENT:
            return await self._poll(conv, turn, record.session)
        if turn.state is TurnState.REPLIED:
            assert turn.reply is not None
            parts = self.s.adapters[conv.channel].render(turn.reply)
            await self.s.ledger.update(conv, turn, state=TurnState.DELIVERING, parts=tuple(parts), delivered=0, attempts=0)
            return _CONTINUE
        if turn.state is TurnState.DELIVERING:
            return await self._deliver(conv, turn, record.route, lease)
        await self._finish(conv, turn, record.session)
        return _CONTINUE

    # -- states ---------------------------------------------------------------------------

    async def _start(self, conv: ConversationKey, turn: Turn, session: OCSSession | None) -> _Outcome:
        inbound = turn.inbound
        channel = self.s.config.channels[conv.channel]
        if inbound.kind is InboundKind.PUSH:
            attachments = [ReplyAttachment(**a) for a in inbound.context.get("attachments", ())]
            reply = Reply(text=inbound.text, kind=ReplyKind.PUSH, attachments=tuple(attachments))
            await self.s.ledger.update(conv, turn, state=TurnState.REPLIED, reply=reply)
            return _CONTINUE
        await self.s.conversations.touch(conv, inbound.route)
        if inbound.kind is InboundKind.RESET:
            if session is not None:
                await self.s.ocs_for(conv.channel).end_session(session.session_id)
            await self.s.conversations.forget_session(conv)
            await self.s.adapters[conv.channel].forget_conversation(inbound.route)
            reply = Reply(text=channel.reset_notice, kind=ReplyKind.NOTICE, in_reply_to=inbound.event_id)
            await self.s.ledger.update(conv, turn, state=TurnState.REPLIED, reply=reply)
            return _CONTINUE
        session = await self._ensure_session(conv, turn, session)
        turn = await self._show_working(conv, turn)
        task_id, session = await self._send(conv, turn, session)
        now = time.time()
        await self.s.ledger.update(
            conv, turn, state=TurnState.SENT, session_id=session.session_id, task_id=task_id,
            sent_at=now, attempts=0, polls=0, next_at=now + self.tuning.poll_first_s,
        )
        return _Outcome("wait", now + self.tuning.poll_first_s)

    async def _send(self, conv: ConversationKey, turn: Turn, session: OCSSession) -> tuple[str, OCSSession]:
        """Upload the files and send the message; on an expired session start a new one and
        resend once (CONTRACT §7.5)."""
        ocs = self.s.ocs_for(conv.channel)
        for attempt in (1, 2):
            ids, notes = await self._upload(conv, turn, session)
            inbound = turn.inbound
            text = inbound.text.strip() or ("[attachment]" if inbound.attachments else "(empty message)")
            if notes:
                text = "\n".join([text, *notes])
            turn = await self.s.ledger.update(conv, turn, state=TurnState.SENDING, sending_at=time.time(), session_id=session.session_id)
            try:
                return await ocs.send_message(session, text, attachment_ids=ids, context=inbound.context), session
            except SessionExpired:
                if attempt == 2:
                    raise
                await self.s.conversations.forget_session(conv)
                session = await self._ensure_session(conv, turn, None)
            except (OCSUnavailable, OCSRateLimited):
                # Not accepted: back to "received", so the retry sends instead of searching.
                await self.s.ledger.update(conv, turn, state=TurnState.RECEIVED)
                raise
        raise AssertionError("unreachable")

    async def _upload(self, conv: ConversationKey, turn: Turn, session: OCSSession) -> tuple[list[int], list[str]]:
        inbound = turn.inbound
        if not inbound.attachments:
            return [], []
        adapter = self.s.adapters[conv.channel]
        files: list[tuple[str, bytes, str]] = []
        notes: list[str] = []
        for attachment in inbound.attachments:
            try:
                got = await adapter.download(attachment, inbound.route)
            except AttachmentUnavailable as exc:
                notes.append(f"[{attachment.name} could not be attached: {exc.reason}]")
                continue
            files.append((got.name, got.data, got.content_type))
        if not files:
            return [], notes
        try:
            return await self.s.ocs_for(conv.channel).upload(session, files), notes
        except OCSRejected as exc:
            # A file type OCS refuses must not sink the words that came with it.
            return [], [*notes, f"[attachments not accepted: {exc.body}]"]

    async def _ensure_session(self, conv: ConversationKey, turn: Turn, session: OCSSession | None) -> OCSSession:
        ocs = self.s.ocs_for(conv.channel)
        if session is not None and session.chatbot_id == ocs.bot.chatbot_id:
            return session
        adapter = self.s.adapters[conv.channel]
        session = await ocs.start_session(remote_id=f"{adapter.kind}:{conv.conversation}", name=turn.inbound.sender_name)
        await self.s.conversations.save_session(conv, session)
        log.info("started OCS session conv=%s session=%s", conv, session.session_id)
        return session

    async def _resume_sending(self, conv: ConversationKey, turn: Turn, session: OCSSession | None) -> _Outcome:
        """A worker died between sending and recording the task id: read the history to learn
        whether OCS took the message, rather than sending it a second time."""
        now = time.time()
        if session is None or session.session_id != turn.session_id:
            await self.s.ledger.update(conv, turn, state=TurnState.RECEIVED)
            return _CONTINUE
        since = _iso(turn.sending_at - 120)
        page = await self.s.ocs_for(conv.channel).poll_session(session, since=since, limit=100)
        text = turn.inbound.text.strip()
        seen_user = False
        for message in page.messages:
            if message.get("role") == "user" and (not text or str(message.get("content", "")).startswith(text)):
                seen_user = True
            elif seen_user and message.get("role") == "assistant":
                await mark_delivered(self.s.redis, self.s.keys.fingerprints(conv), message)
                reply = reply_from_ocs(message, kind=ReplyKind.ANSWER, in_reply_to=turn.inbound.event_id)
                await self.s.ledger.update(conv, turn, state=TurnState.REPLIED, reply=reply)
                return _CONTINUE
        timeout = self.s.ocs_for(conv.channel).bot.task_timeout_s
        if not seen_user and now - turn.sending_at > _SENDING_GRACE_S:
            await self.s.ledger.update(conv, turn, state=TurnState.RECEIVED)  # never arrived: send
            return _CONTINUE
        if seen_user and now - turn.sending_at > timeout:
            return await self._too_slow(conv, turn)
        next_at = now + self.tuning.poll_max_s
        await self.s.ledger.update(conv, turn, next_at=next_at)
        return _Outcome("wait", next_at)

    async def _poll(self, conv: ConversationKey, turn: Turn, session: OCSSession | None) -> _Outcome:
        if session is None or session.session_id != turn.session_id:
            await self.s.ledger.update(conv, turn, state=TurnState.RECEIVED)
            return _CONTINUE
        ocs = self.s.ocs_for(conv.channel)
        result = await ocs.poll_task(session, turn.task_id)
        now = time.time()
        if result.status == "complete" and result.message is not None:
            await mark_delivered(self.s.redis, self.s.keys.fingerprints(conv), result.message)
            reply = reply_from_ocs(result.message, kind=ReplyKind.ANSWER, in_reply_to=turn.inbound.event_id)
            await self.s.ledger.update(conv, turn, state=TurnState.REPLIED, reply=reply)
            return _CONTINUE
        if result.status == "error":
            # OCS's error text is written for the end user (§4.3): it is the answer.
            reply = Reply(text=result.error or "", kind=ReplyKind.NOTICE, in_reply_to=turn.inbound.event_id)
            await self.s.ledger.update(conv, turn, state=TurnState.REPLIED, reply=reply, last_error=result.error or "")
            return _CONTINUE
        if now - turn.sent_at > ocs.bot.task_timeout_s:
            return await self._too_slow(conv, turn)
        turn = await self._show_working(conv, turn)
        wait = min(self.tuning.poll_first_s * self.tuning.poll_growth ** (turn.polls + 1), self.tuning.poll_max_s)
        refresh = self.s.adapters[conv.channel].working_refresh_s
        if refresh:
            wait = min(wait, refresh)  # wake in time to keep the typing indicator alive
        await self.s.ledger.update(conv, turn, polls=turn.polls + 1, next_at=now + wait)
        return _Outcome("wait", now + wait)

    async def _too_slow(self, conv: ConversationKey, turn: Turn) -> _Outcome:
        """Our own timeout (an unknown task polls as processing forever, §0.9): tell the user,
        and let the session poll deliver the answer when it lands."""
        channel = self.s.config.channels[conv.channel]
        reply = Reply(text=channel.slow_notice, kind=ReplyKind.NOTICE, in_reply_to=turn.inbound.event_id)
        await self.s.ledger.update(conv, turn, state=TurnState.REPLIED, reply=reply, last_error="task timeout")
        await self.s.redis.zadd(self.s.keys.botpoll, {str(conv): time.time() + self.tuning.botpoll_interval_s})
        return _CONTINUE

    async def _deliver(self, conv: ConversationKey, turn: Turn, last_route: Mapping[str, str], lease: Lease) -> _Outcome:
        adapter = self.s.adapters[conv.channel]
        route = dict(turn.inbound.route or last_route)
        for index in range(turn.delivered, len(turn.parts)):
            await lease.renew()
            platform_id = await adapter.send({**route, "delivery_id": f"{turn.id}.{index}"}, turn.parts[index])
            turn = await self.s.ledger.update(
                conv, turn, delivered=index + 1, platform_ids=(*turn.platform_ids, platform_id), attempts=0
            )
        if turn.working_at:
            try:
                await adapter.clear_working(route)
            except Exception:  # noqa: BLE001 - a leftover indicator must not fail a delivered turn
                log.warning("clear_working failed conv=%s", conv, exc_info=True)
        await self.s.ledger.update(conv, turn, state=TurnState.DONE)
        return _CONTINUE

    async def _finish(self, conv: ConversationKey, turn: Turn, session: OCSSession | None) -> None:
        await self.s.ledger.finish(conv, turn)
        if session is not None:
            # Bot-initiated messages may follow; look for them no sooner than the interval.
            await self.s.redis.zadd(self.s.keys.botpoll, {str(conv): time.time() + self.tuning.botpoll_interval_s}, nx=True)
        log.info("turn done conv=%s turn=%s parts=%d", conv, turn.id, len(turn.parts))

    # -- helpers --------------------------------------------------------------------------

    async def _show_working(self, conv: ConversationKey, turn: Turn) -> Turn:
        adapter = self.s.adapters[conv.channel]
        refresh = adapter.working_refresh_s
        now = time.time()
        if turn.working_at and (refresh is None or now - turn.working_at < refresh):
            return turn
        try:
            await adapter.show_working(turn.inbound.route)
        except Exception:  # noqa: BLE001 - best effort: a typing indicator never fails a turn
            log.debug("show_working failed conv=%s", conv, exc_info=True)
        return await self.s.ledger.update(conv, turn, working_at=now)

    async def _retry(self, conv: ConversationKey, turn: Turn, exc: Exception) -> _Outcome:
        attempts = turn.attempts + 1
        if attempts >= self.tuning.max_attempts:
            return await self._fail(conv, turn, f"gave up after {attempts} attempts: {type(exc).__name__}: {exc}")
        asked = getattr(exc, "retry_after_s", None)
        backoff = min(self.tuning.backoff_base_s * 2 ** (attempts - 1), self.tuning.backoff_max_s)
        delay = float(asked) if asked is not None else backoff
        next_at = time.time() + delay
        log.warning("retry conv=%s turn=%s in %.1fs: %s", conv, turn.id, delay, type(exc).__name__)
        await self.s.ledger.update(conv, turn, attempts=attempts, last_error=f"{type(exc).__name__}: {exc}", next_at=next_at)
        return _Outcome("wait", next_at)

    async def _fail(self, conv: ConversationKey, turn: Turn, error: str) -> _Outcome:
        """Park the turn in the dead-letter store; tell the user once, if we still can."""
        log.error("dead-lettered conv=%s turn=%s: %s", conv, turn.id, error)
        if turn.dead_letter:
            await self.s.ledger.finish(conv, turn)  # the notice itself failed: nothing more to do
            return _CONTINUE
        letter = await self._park(conv, turn, error)
        user_facing = turn.inbound.kind is not InboundKind.PUSH and turn.state in (
            TurnState.RECEIVED, TurnState.SENDING, TurnState.SENT,
        )
        if not user_facing:
            await self.s.ledger.finish(conv, turn)
            return _CONTINUE
        notice = Reply(self.s.config.channels[conv.channel].failure_notice, ReplyKind.NOTICE, in_reply_to=turn.inbound.event_id)
        await self.s.ledger.update(
            conv, turn, state=TurnState.REPLIED, reply=notice, dead_letter=letter, attempts=0, next_at=0.0, last_error=error
        )
        return _CONTINUE

    async def _park(self, conv: ConversationKey, turn: Turn, error: str) -> str:
        letter = await self.s.dead_letters.park(
            conv, turn.inbound_raw, error=error, ocs=turn.ocs_ids(),
            ledger={"turn": turn.id, "state": str(turn.state), "attempts": turn.attempts, "delivered": turn.delivered},
        )
        return letter.id


def _iso(ts: float) -> str:
    return (datetime.fromtimestamp(ts, tz=timezone.utc) - timedelta(0)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
