"""Watches: OCS writes scheduled and event messages into a session that only its session messages
reveal (docs/OCS.md §6.5). A watch looks once into one idle conversation's session and queues what
is new behind the user's messages, so order and retries are the turn engine's.

It runs while the runner owns the conversation and only when no turn is running, so it never
races a turn for the same answer; answers that turns already delivered are skipped by
fingerprint. Watches are the first to yield when the OCS request budget is short
(``Priority.BACKGROUND``), and they thin out as a user stays silent: every
``watch_interval_s`` while the user was active in the last ``watch_recent_s``, then in
proportion to the silence up to ``watch_max_interval_s``, and never after
``watch_window_s``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict

from gateway.core.config import WorkerTuning
from gateway.core.errors import (
    OCSRateLimited,
    OCSRejected,
    OCSUnavailable,
    SessionExpired,
)
from gateway.core.models import Inbound, InboundKind
from gateway.ocs.budget import Priority
from gateway.ocs.messages import MessageRole, OCSMessage, SessionStatus
from gateway.store.clock import RedisClock
from gateway.store.fingerprints import delivered_ops, was_delivered
from gateway.store.lease import Op
from workers.context import WorkerServices
from workers.hold import Hold

__all__ = ["SessionWatcher", "watch_interval"]

log = logging.getLogger("ocsgw.watch")
_MAX_PAGES = 5


def watch_interval(tuning: WorkerTuning, silent_s: float) -> float | None:
    """Seconds until the next look into a session whose user has been silent ``silent_s``;
    None when it is no longer worth the OCS budget."""
    if silent_s > tuning.watch_window_s:
        return None
    if silent_s <= tuning.watch_recent_s:
        return tuning.watch_interval_s
    grown = tuning.watch_interval_s * silent_s / tuning.watch_recent_s
    return min(grown, max(tuning.watch_max_interval_s, tuning.watch_interval_s))


class SessionWatcher:
    def __init__(self, services: WorkerServices, tuning: WorkerTuning, clock: RedisClock) -> None:
        self.services = services
        self.tuning = tuning
        self.clock = clock

    async def look(self, hold: Hold) -> bool:
        """Queue new assistant messages of the held conversation's session; True if any."""
        s = self.services
        conv = hold.conv
        member = str(conv)
        await hold.refresh(s.ledger)
        record = hold.record
        if hold.turn is not None or hold.head is not None:
            return False  # a turn is running; its end reschedules the poll
        now = self.clock.now()
        interval = watch_interval(self.tuning, now - record.last_active)
        if record.session is None or record.gone or conv.channel not in s.adapters or interval is None:
            await hold.write([Op("ZREM", s.keys.watch, (member,))])
            return False
        if now - record.last_polled < interval * 0.9:
            await hold.write([Op("ZADD", s.keys.watch, (record.last_polled + interval, member))])
            return False  # never more than once per interval per session (docs/OCS.md §4.4)
        ocs = s.ocs_for(conv.channel)
        cursor = record.cursor
        fresh: list[OCSMessage] = []
        ended = False
        try:
            for _ in range(_MAX_PAGES):
                hold.lease.check()
                page = await ocs.session_messages(record.session, since=cursor, priority=Priority.BACKGROUND)
                for message in page.messages:
                    cursor = message.created_at or cursor
                    if message.role is not MessageRole.ASSISTANT:
                        continue
                    if not await was_delivered(s.redis, s.keys.fingerprints(conv), message):
                        fresh.append(message)
                if not page.has_more:
                    ended = page.session_status is SessionStatus.ENDED
                    break
        except SessionExpired:
            forgotten, forget = s.conversations.forget_session(conv, record)
            await hold.write(forget, record=forgotten)
            return False
        except OCSRateLimited as exc:
            await hold.write([Op("ZADD", s.keys.watch, (now + max(exc.retry_after_s, interval), member))])
            return False
        except (OCSUnavailable, OCSRejected) as exc:
            log.warning("watch failed: %s", exc)
            await hold.write([Op("ZADD", s.keys.watch, (now + interval * 2, member))])
            return False
        route = {k: v for k, v in record.route.items() if k != "reply_to"}
        ops: list[Op] = []
        for message in fresh:
            push = Inbound(
                key=conv,
                event_id=f"push:{uuid.uuid4().hex}",
                kind=InboundKind.PUSH,
                sender_id="ocs",
                text=message.content,
                context={"attachments": [asdict(a) for a in message.attachments]},
                route=route,
                received_at=now,
            )
            ops.append(Op("RPUSH", s.keys.inbox(conv), (push.to_json(),)))
            ops.extend(delivered_ops(s.keys.fingerprints(conv), message, now=now))
        polled, polled_ops = s.conversations.polled(conv, record, cursor=cursor, now=now)
        ops.extend(polled_ops)
        if ended:
            # OCS finished the session (docs/OCS.md §6.1): it takes no more messages and writes none. Its
            # last words are queued above; the next message starts a new session.
            polled, forget = s.conversations.forget_session(conv, polled)
            ops.extend(forget)
            log.info("session %s was finished by OCS: forgotten", record.session.session_id)
        else:
            ops.append(Op("ZADD", s.keys.watch, (now + interval, member)))
        if fresh:
            ops.append(Op("ZADD", s.keys.active, (now, member)))
            # NX: a user's message admitted meanwhile is older and stays the head's time.
            ops.append(Op("ZADD", s.keys.waiting, ("NX", now, member)))
        await hold.write(ops, record=polled)
        if fresh:
            hold.invalidate()
            log.info("queued %d bot-initiated message(s)", len(fresh))
        return bool(fresh)
