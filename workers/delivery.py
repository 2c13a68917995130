"""Delivery: a recorded answer's parts handed to the platform one by one, each marked before
it is sent, so a crash repeats at most the one part that was on its way, and remembered once
posted, so a lost Redis connection repeats none (a voice reply is one of
them, spoken when its turn comes: ``workers/voice_replies.py``); and the "working" indicator the
platform shows while OCS thinks."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from gateway.core.channel import ChannelAdapter, VoiceNote
from gateway.core.errors import DeliveryRejected, PacingWait, RecipientGone, RetryLater
from gateway.core.models import Delivery, InboundKind, Outgoing, Route
from gateway.store.clock import RedisClock
from gateway.store.dead_letters import ReplayedParts
from gateway.store.lease import Op
from gateway.store.ledger import Turn
from gateway.store.reply_delays import delay_ops
from workers.closing import TurnCloser, bot_of
from workers.context import WorkerServices
from workers.hold import CONTINUE, Hold, Outcome, PostedPart
from workers.voice_replies import VOICE_HINT, VoiceReplies

__all__ = ["Deliverer", "numbering"]

log = logging.getLogger("ocsgw.turns")


def numbering(turn: Turn) -> tuple[str, int]:
    """Whose reply ``turn.parts`` belong to and the index of its first part in that reply: the
    turn's own from 0, or for a replayed delivery, the original turn's from where it stopped."""
    if turn.inbound.kind is InboundKind.PUSH:
        replayed = ReplayedParts.from_context(turn.inbound.context)
        if replayed is not None and replayed.reply_id:
            return replayed.reply_id, replayed.first
    return turn.id, 0


class Deliverer:
    def __init__(self, services: WorkerServices, clock: RedisClock, closer: TurnCloser) -> None:
        self.services = services
        self.clock = clock
        self.closer = closer
        self.voice = VoiceReplies(services)

    async def deliver(self, hold: Hold, turn: Turn) -> Outcome:
        conv = hold.conv
        adapter = self.services.adapters[conv.channel]
        route = dict(adapter.reply_route([inbound.route for inbound in turn.inbounds]) or hold.record.route)
        ledger = self.services.ledger
        reply_id, first = numbering(turn)
        total = first + len(turn.parts)
        for index in range(turn.delivered, len(turn.parts)):
            # Posted by this process already, its mark lost with a Redis connection: not again.
            platform_id = hold.posted_id(turn.id, index)
            if platform_id is None:
                turn, platform_id = await self._post(hold, adapter, route, turn, index, Delivery.of_part(reply_id, first + index, total))
            following = index + 1 if index + 1 < len(turn.parts) else -1
            turn, ops = ledger.update(
                conv, turn, delivered=index + 1, sending_part=following,
                platform_ids=(*turn.platform_ids, platform_id), failing_since=0.0, attempts=0,
            )
            if index == 0:
                ops += self._first_part_ops(hold, turn)
            await hold.write(ops, turn=turn)
            hold.posted = None
        if turn.working_at:
            try:
                await adapter.clear_working(route)
            except Exception:  # a leftover indicator must not fail a delivered turn
                log.warning("clear_working failed", exc_info=True)
        await self.closer.finish(hold, turn)
        log.info("turn done (%d parts)", len(turn.parts))
        return CONTINUE

    async def _post(
        self, hold: Hold, adapter: ChannelAdapter[Any], route: Route, turn: Turn, index: int, delivery: Delivery
    ) -> tuple[Turn, str]:
        """Mark part ``index`` as on its way, post it, and remember that it was posted until its
        delivery mark is written: after a crash at most this one part repeats, and after a lost
        Redis connection none does."""
        if turn.sending_part != index:
            # Written before the call: after a crash, at most this one part can repeat.
            turn, ops = self.services.ledger.update(hold.conv, turn, sending_part=index)
            await hold.write(ops, turn=turn)
        hold.lease.check()
        part = turn.parts[index]
        if part.hints.get(VOICE_HINT):
            post = self._voice_poster(hold, adapter, route, delivery)
            platform_id = await self.voice.send(hold.conv, turn, part, delivery, post)
        else:
            platform_id = await self._send_part(hold, adapter, route, part, delivery)
        hold.posted = PostedPart(turn.id, index, platform_id)
        return turn, platform_id

    async def send_aside(self, hold: Hold, turn: Turn, part: Outgoing, delivery: Delivery) -> str:
        """One message before the answer, outside its parts (what a voice note was heard as, or
        why it was not: ``workers/voice_notes.py``); errors as ``ChannelAdapter.send``."""
        adapter = self.services.adapters[hold.conv.channel]
        hold.lease.check()
        return await self._send_part(hold, adapter, dict(turn.inbound.route or hold.record.route), part, delivery)

    async def show_working(self, hold: Hold, turn: Turn) -> Turn:
        """Show (or keep alive) the platform's indicator that the bot is working on it."""
        adapter = self.services.adapters[hold.conv.channel]
        refresh = adapter.working_refresh_s
        now = self.clock.now()
        if turn.working_at and (refresh is None or now - turn.working_at < refresh - 0.05):
            return turn
        try:
            await adapter.show_working(turn.last.route)
        except Exception:  # best effort: a typing indicator never fails a turn
            log.debug("show_working failed", exc_info=True)
        if not turn.working_at:
            turn, ops = self.services.ledger.update(hold.conv, turn, working_at=now)
            await hold.write(ops, turn=turn)  # so a resumed turn still clears it
            return turn
        turn = replace(turn, working_at=now)
        hold.keep(turn)  # a refresh of the indicator needs no record
        return turn

    async def show_progress(self, hold: Hold, turn: Turn, line: str) -> tuple[Turn, bool]:
        """Show OCS's progress line where the platform can (a draft, a thread status, a progress
        callback); False when it cannot, and the working indicator goes on instead. Like the
        indicator, it is recorded once (``working_at``), so the turn's end clears it."""
        adapter = self.services.adapters[hold.conv.channel]
        try:
            shown = await adapter.show_progress(turn.last.route, line, turn.id)
        except Exception:  # best effort, as the indicator: progress never fails a turn
            log.debug("show_progress failed", exc_info=True)
            shown = False
        if not shown:
            return await self.show_working(hold, turn), False
        now = self.clock.now()
        if not turn.working_at:
            turn, ops = self.services.ledger.update(hold.conv, turn, working_at=now)
            await hold.write(ops, turn=turn)
        else:
            turn = replace(turn, working_at=now)  # the line keeps the indicator's place alive
            hold.keep(turn)
        return turn, True

    def _first_part_ops(self, hold: Hold, turn: Turn) -> list[Op]:
        """The answer's first part is out: observe the reply delay (OCS done → sent) for this
        process's metric, and return the writes that record it with the user's wait (edge →
        sent) for the console's fleet-wide p50/p95, to ride with the delivery record (no round
        trip of their own). Bot-initiated messages had no one waiting."""
        now = self.clock.now()
        samples: dict[str, float] = {}
        if hold.ready_at is not None:
            samples["reply"] = max(now - hold.ready_at, 0.0)
            self.services.metrics.reply_delay_seconds.labels(bot_of(self.services, hold.conv)).observe(samples["reply"])
            hold.ready_at = None
        if turn.inbound.kind != InboundKind.PUSH and turn.inbound.received_at:
            samples["wait"] = max(now - turn.inbound.received_at, 0.0)
        return delay_ops(self.services.keys, samples, now=now)

    def _voice_poster(
        self, hold: Hold, adapter: ChannelAdapter[Any], route: Route, delivery: Delivery
    ) -> Callable[[VoiceNote], Awaitable[str]]:
        async def post(note: VoiceNote) -> str:
            return await self._counted(hold, adapter.send_voice(route, note, delivery))

        return post

    async def _send_part(
        self, hold: Hold, adapter: ChannelAdapter[Any], route: Route, part: Outgoing, delivery: Delivery
    ) -> str:
        return await self._counted(hold, adapter.send(route, part, delivery))

    async def _counted(self, hold: Hold, sending: Awaitable[str]) -> str:
        """A platform send, counted by outcome where the engine meets the adapter's errors (the
        adapters stay unaware of metrics)."""
        metrics, channel = self.services.metrics, hold.conv.channel
        try:
            platform_id: str = await sending
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
