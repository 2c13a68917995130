"""The two writes every path of a turn ends with: the answer recorded with its rendering (from
then on OCS is never asked again for it), and the turn dropped with its inbox item.

The state machine (``workers/turns.py``), delivery (``workers/delivery.py``) and the failure
policy (``workers/failures.py``) all end turns; they do it here, so a turn ends one way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gateway.core.config import WorkerTuning
from gateway.core.models import ConversationKey, InboundKind, Outgoing, Reply, ReplyKind
from gateway.store.clock import RedisClock
from gateway.store.conversations import ConversationRecord
from gateway.store.lease import Op
from gateway.store.ledger import Turn, TurnState
from workers.context import WorkerServices
from workers.hold import Hold
from workers.voice_replies import voice_reply_parts

__all__ = ["TurnCloser", "bot_of", "inbox_depth", "turn_outcome"]

log = logging.getLogger("ocsgw.turns")


def bot_of(services: WorkerServices, conv: ConversationKey) -> str:
    """The bot a conversation's channel serves, as metrics label it ("-" once unconfigured)."""
    channel = services.config.channels.get(conv.channel)
    return channel.bot if channel is not None else "-"


def inbox_depth(services: WorkerServices, conv: ConversationKey) -> int:
    """How many of the inbox's first items the owner reads: as many as a turn of the channel
    may cover (``coalesce.max_messages``), one where bursts are off or the channel is gone."""
    channel = services.config.channels.get(conv.channel)
    return channel.coalesce.depth if channel is not None else 1


def turn_outcome(turn: Turn) -> str:
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


@dataclass(frozen=True, slots=True)
class TurnCloser:
    services: WorkerServices
    tuning: WorkerTuning
    clock: RedisClock

    async def answer(
        self,
        hold: Hold,
        turn: Turn,
        reply: Reply,
        *,
        extra: list[Op] | None = None,
        last_error: str = "",
        parts: tuple[Outgoing, ...] | None = None,
        dead_letter: str = "",
        record: ConversationRecord | None = None,
    ) -> Turn:
        """Record the answer and its rendering in one write, and move the turn to delivering."""
        if self.services.config.log_message_text:
            log.debug("reply (%s): %r", reply.kind, reply.text)  # an operator's opt-in (log_message_text)
        if parts is None:
            adapter = self.services.adapters[hold.conv.channel]
            parts = tuple(adapter.render(reply))
            if turn.unattached:
                # The user hears why their file is missing before the answer that went without it.
                template = self.services.config.channels[hold.conv.channel].unattached_notice
                notice = Reply(text=template.replace("{files}", ", ".join(turn.unattached)), kind=ReplyKind.NOTICE,
                               in_reply_to=reply.in_reply_to)
                parts = (*adapter.render(notice), *parts)
            parts += voice_reply_parts(self.services, hold.conv, turn, reply)  # after the words, never instead
        changes: dict[str, Any] = {
            "state": TurnState.DELIVERING, "reply": reply, "parts": parts, "delivered": 0, "sending_part": -1,
            "attempts": 0, "failing_since": 0.0, "next_at": 0.0,
        }
        if last_error:
            changes["last_error"] = last_error
        if dead_letter:
            changes["dead_letter"] = dead_letter
        turn, ops = self.services.ledger.update(hold.conv, turn, **changes)
        ops += extra or []
        if record is not None:  # ``extra`` also changes the conversation record
            await hold.write(ops, turn=turn, record=record)
        else:
            await hold.write(ops, turn=turn)
        return turn

    async def finish(self, hold: Hold, turn: Turn, *, outcome: str | None = None) -> None:
        """Drop the turn and its inbox item; learn the next head in the same round trip.
        ``outcome`` labels ``ocsgw_turn_seconds`` (read from the turn when not given)."""
        conv = hold.conv
        ops = self.services.ledger.finish(conv, turn)
        record = hold.record
        if record.session is not None and not record.gone:
            # Bot-initiated messages may follow; look for them no sooner than the interval.
            poll_at = self.clock.now() + self.tuning.watch_interval_s
            ops.append(Op("ZADD", self.services.keys.watch, ("NX", poll_at, str(conv))))
        await hold.end_turn(ops, inbox=self.services.keys.inbox(conv), depth=inbox_depth(self.services, conv))
        received = turn.inbound.received_at
        if received > 0:
            self.services.metrics.turn_seconds.labels(bot_of(self.services, conv), outcome or turn_outcome(turn)).observe(
                max(self.clock.now() - received, 0.0)
            )
        hold.ready_at = hold.schedule_at = None
