"""Bot-initiated messages: OCS writes scheduled and event messages into a session that only the
session poll reveals (CONTRACT §6.5). This looks once into one conversation's session and
queues what is new behind the user's messages, so order and retries are the turn engine's.

It runs under the conversation's lease and only when no turn is running, so it never races a
turn for the same answer; answers that turns already delivered are skipped by fingerprint.
"""

from __future__ import annotations

import logging
import time
import uuid

from gateway.config import WorkerTuning
from gateway.errors import OCSRateLimited, OCSRejected, OCSUnavailable, SessionExpired
from gateway.fingerprints import mark_delivered, was_delivered
from gateway.lease import Lease
from gateway.models import ConversationKey, Inbound, InboundKind
from gateway.services import Services

__all__ = ["poll_for_bot_messages"]

log = logging.getLogger("ocsgw.botpoll")
_MAX_PAGES = 5


async def poll_for_bot_messages(services: Services, tuning: WorkerTuning, conv: ConversationKey) -> bool:
    """Queue new assistant messages of ``conv``'s session; True when any were queued."""
    s = services
    lease = await Lease.acquire(s.redis, s.keys.lease(conv), ttl_s=tuning.lease_ttl_s)
    if lease is None:
        return False
    try:
        return await _poll(s, tuning, conv)
    finally:
        await lease.release()


async def _poll(s: Services, tuning: WorkerTuning, conv: ConversationKey) -> bool:
    now = time.time()
    next_key = s.keys.botpoll
    if await s.redis.exists(s.keys.turn(conv)) or await s.redis.llen(s.keys.inbox(conv)):
        return False  # a turn is running; its end reschedules the poll
    record = await s.conversations.load(conv)
    if record.session is None or record.gone or conv.channel not in s.adapters:
        await s.redis.zrem(next_key, str(conv))
        return False
    if now - record.last_active > tuning.botpoll_active_window_s:
        await s.redis.zrem(next_key, str(conv))  # quiet for long: stop spending the OCS budget
        return False
    if now - record.last_polled < tuning.botpoll_interval_s * 0.9:
        await s.redis.zadd(next_key, {str(conv): record.last_polled + tuning.botpoll_interval_s})
        return False  # never more than once per interval per session (§4.4)
    ocs = s.ocs_for(conv.channel)
    cursor = record.cursor
    fresh = []
    try:
        for _ in range(_MAX_PAGES):
            page = await ocs.poll_session(record.session, since=cursor)
            for message in page.messages:
                cursor = str(message.get("created_at") or cursor)
                if message.get("role") != "assistant":
                    continue
                if not await was_delivered(s.redis, s.keys.fingerprints(conv), message):
                    fresh.append(message)
            if not page.has_more:
                break
    except SessionExpired:
        await s.conversations.forget_session(conv)
        return False
    except OCSRateLimited as exc:
        await s.redis.zadd(next_key, {str(conv): now + max(exc.retry_after_s, tuning.botpoll_interval_s)})
        return False
    except (OCSUnavailable, OCSRejected) as exc:
        log.warning("session poll failed conv=%s: %s", conv, exc)
        await s.redis.zadd(next_key, {str(conv): now + tuning.botpoll_interval_s * 2})
        return False
    route = {k: v for k, v in record.route.items() if k != "reply_to"}
    for message in fresh:
        push = Inbound(
            key=conv,
            event_id=f"push:{uuid.uuid4().hex}",
            kind=InboundKind.PUSH,
            sender_id="ocs",
            text=str(message.get("content") or ""),
            context={"attachments": list(message.get("attachments") or [])},
            route=route,
            received_at=now,
        )
        await s.redis.rpush(s.keys.inbox(conv), push.to_json())
        await mark_delivered(s.redis, s.keys.fingerprints(conv), message)
    if cursor:
        await s.conversations.set_cursor(conv, cursor)
    else:
        await s.conversations.mark_polled(conv)
    await s.redis.zadd(next_key, {str(conv): now + tuning.botpoll_interval_s})
    if fresh:
        await s.redis.zadd(s.keys.active, {str(conv): now})
        log.info("queued %d bot-initiated message(s) conv=%s", len(fresh), conv)
    return bool(fresh)
