"""Every Redis key the gateway uses, documented once (dramatiq's ``dispatch.lua`` habit).

All keys start with the namespace (default ``ocsgw``); ``{conv}`` is a ``ConversationKey`` as
``channel/conversation``. An adapter's own state lives under a prefix of its own,
``{namespace}:{prefix}:…`` (``Keys.for_adapter``), listed in the adapter's ``keys`` module
(``adapters/<platform>/keys.py``); core knows no platform's keys. The table holds what every
channel shares:

===============================  ======  ===================================================
key                              type    meaning
===============================  ======  ===================================================
``seen:{channel}:{id}``          string  an inbound event id (or alias) already taken; TTL
                                         ``dedup_ttl_s``
``inbox:{conv}``                 list    the conversation's waiting inbound events, oldest
                                         first (JSON ``Inbound``); the head is the current turn
``turn:{conv}``                  hash    the turn ledger of the head inbox item: state, OCS
                                         ids, reply, delivered parts, attempts, next step time
``conv:{conv}``                  hash    the conversation: route, gone flag, OCS session id,
                                         token, started_at, poll cursor, last activity
``lease:{conv}``                 string  the worker step that holds the conversation; PX TTL
``active``                       zset    conversations with work, scored by when their next
                                         step is due (the sweeper's list)
``waiting``                      zset    conversations whose inbox is not empty, scored by
                                         the ``received_at`` of the inbox's head (the oldest
                                         message not yet answered): ``gateway.store.waiting``
``watch``                        zset    conversations with an OCS session, scored by when
                                         their next watch (a look for bot-initiated messages) is due
``fp:{conv}``                    zset    fingerprints of replies already delivered, scored by
                                         time, so the watch does not repeat them
``dlq``                          zset    dead-letter ids by time parked; ids older than the
                                         retention are pruned on park and list
``dlq:{id}``                     string  a dead letter (JSON: inbound, error, OCS ids, ledger,
                                         stage, reply, parts); TTL ``dead_letter_retention_days``
``oauth:{bot}``                  string  the cached OCS access token (JSON); TTL to expiry
``demo:replies:{conversation}``  list    replies received by the demo callback receiver
``latency:{bot}``                hash    how long OCS took to complete a task, for the poll
                                         schedule (``workers.poll_schedule``): ``n``
                                         observations, ``b<i>`` forward-decayed bucket counts;
                                         TTL 30 days from the last record
``budget:{scope}:{name}:{start}``  hash  OCS requests booked in one aligned window
                                         (``gateway.ocs.budget``): ``n`` used, ``limit``, ``name``;
                                         scope ``url`` (name: sha1 of the origin, 12 hex),
                                         ``session`` (OCS session id) or ``starts`` (channel);
                                         expires at the window's end
``budget:block:{scope}:{name}``  hash    OCS said stop (429, WAF 403): ``reason``, ``name``;
                                         PX TTL = the time to wait
``workers``                      hash    worker id → its latest heartbeat (JSON;
                                         ``gateway.store.heartbeats``)
``traffic:{channel}:{minute}``   hash    requests the edge answered for a channel in one
                                         minute (Unix s // 60): ``ok``, ``4xx``, ``5xx``
                                         (``gateway.store.traffic``); TTL 62 min
``reply_delay:{minute}``         hash    reply delays of every worker in one minute: histogram
                                         bins ``{series}:{i}`` (``gateway.store.reply_delays``);
                                         TTL 62 min
``admin:failures:{address}``     string  wrong console tokens from one client address in the
                                         current window (``gateway.edge.admin.auth``)
``voice:{part}``                 string  a voice reply's audio, spoken once for the part with
                                         that delivery id and kept for its retries until it
                                         is posted (``workers/voice_replies.py``); TTL 2 h
===============================  ======  ===================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.models import ConversationKey

__all__ = ["AdapterKeys", "CORE_PREFIXES", "Keys", "as_text"]

#: The first part of every key in the table above (and the readiness probe's ``ready``): no
#: adapter may take one as its prefix.
CORE_PREFIXES = frozenset({
    "seen", "inbox", "turn", "conv", "lease", "active", "waiting", "watch", "fp", "dlq", "oauth", "demo",
    "latency", "budget", "workers", "traffic", "reply_delay", "admin", "ready", "voice",
})


def as_text(value: object) -> str:
    """A Redis reply as text (our clients return bytes; typed stubs say bytes | str)."""
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class AdapterKeys:
    """The keys of one adapter's own state: ``{namespace}:{prefix}:{parts…}``. The adapter names
    the parts (``adapters/<platform>/keys.py``)."""

    namespace: str
    prefix: str

    def key(self, *parts: str) -> str:
        return ":".join((self.namespace, self.prefix, *parts))


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds every key with the namespace prefix."""

    namespace: str = "ocsgw"

    def _k(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    def for_adapter(self, prefix: str) -> AdapterKeys:
        """The key builder of an adapter whose keys start with ``prefix`` (its own: one that the
        shared keys use, or that holds a ``:``, is refused).

        Raises:
            ValueError: ``prefix`` is taken or malformed.
        """
        if prefix in CORE_PREFIXES or not prefix or ":" in prefix:
            raise ValueError(f"{prefix!r} cannot prefix an adapter's keys (taken by the shared keys, or malformed)")
        return AdapterKeys(self.namespace, prefix)

    def seen(self, channel: str, event_id: str) -> str:
        return self._k("seen", channel, event_id)

    def inbox(self, conv: ConversationKey) -> str:
        return self._k("inbox", str(conv))

    def turn(self, conv: ConversationKey) -> str:
        return self._k("turn", str(conv))

    def conversation(self, conv: ConversationKey) -> str:
        return self._k("conv", str(conv))

    def lease(self, conv: ConversationKey) -> str:
        return self._k("lease", str(conv))

    def fingerprints(self, conv: ConversationKey) -> str:
        return self._k("fp", str(conv))

    @property
    def active(self) -> str:
        return self._k("active")

    @property
    def waiting(self) -> str:
        """Zset: conversation → its inbox head's ``received_at``; ``gateway/store/waiting.py``."""
        return self._k("waiting")

    @property
    def watch(self) -> str:
        return self._k("watch")

    @property
    def dlq(self) -> str:
        return self._k("dlq")

    @property
    def workers(self) -> str:
        """Hash: worker id → its latest heartbeat (JSON); ``gateway/store/heartbeats.py``."""
        return self._k("workers")

    def dead_letter(self, letter_id: str) -> str:
        return self._k("dlq", letter_id)

    def oauth_token(self, bot: str) -> str:
        return self._k("oauth", bot)

    def demo_replies(self, conversation: str) -> str:
        return self._k("demo", "replies", conversation)

    def latency(self, bot: str) -> str:
        return self._k("latency", bot)

    @property
    def budget_prefix(self) -> str:
        """Every budget key starts with this (``ocs-gateway budget`` scans it)."""
        return self._k("budget", "")

    def budget_bucket(self, scope: str, name: str, window_start: int | None = None) -> str:
        """One window's bucket; without ``window_start``, the prefix the budget script completes
        with the window it reads from Redis ``TIME``."""
        base = self._k("budget", scope, name)
        return base if window_start is None else f"{base}:{window_start}"

    def budget_block(self, scope: str, name: str) -> str:
        return self._k("budget", "block", scope, name)

    def traffic(self, channel: str, minute: int) -> str:
        """Hash: one channel's answered requests in one minute (``minute`` = Unix seconds // 60)."""
        return self._k("traffic", channel, str(minute))

    def admin_failures(self, address: str) -> str:
        """String: wrong /admin tokens offered from ``address`` (an IP, or an IPv6 /64) lately."""
        return self._k("admin", "failures", address)

    def voice_audio(self, delivery_id: str) -> str:
        """String: the spoken audio of the voice-reply part with ``delivery_id`` (``reply.index``)."""
        return self._k("voice", delivery_id)

    def reply_delay(self, minute: int) -> str:
        """Hash: every worker's reply delay bins in one minute (``minute`` = Unix seconds // 60)."""
        return self._k("reply_delay", str(minute))
