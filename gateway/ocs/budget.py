"""One OCS request budget shared by every process (docs/OCS.md §3): a request is booked in Redis
before it is made, so all workers on all hosts together stay inside OCS's limits.

Three kinds of bucket, each an aligned fixed window like OCS's own limiter
(``window_start = now - now % window_s``, time from Redis ``TIME`` so every host reads one clock):

- ``base_url``: every request to one OCS origin, all bots together (the hosted WAF's
  2,000 / 5 min per egress IP, which answers with an HTML 403 when exceeded);
- ``session``: the requests of one OCS session (the ``chat_api`` throttle, 300 / 5 min);
- ``starts``: the session starts of one channel (OAuth starts share one bucket, 300 / 5 min).

A booking takes one round trip (a Lua script called by ``EVALSHA``) and is all-or-nothing: a
refusal books nothing. When a bucket runs short the lowest priority yields first: bot-initiated
polls may fill ``background_share`` of it, sends ``send_share``, waiting turns all of it, so a
user who is waiting is answered while the unsolicited-message polls pause. When OCS answers 429 or
the WAF its 403 anyway (another client on the same IP, a lower server setting), ``block`` stops
every process until the time OCS named.

Every booking also counts in a per-window index of its scope (``index_key``), and every block in
an index of blocks, so the busiest session (a gauge) and the open buckets (``usage``) are read
from a few keys, never found by scanning the keyspace.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from gateway.core.config import BudgetLimits
from gateway.core.keys import Keys, as_text
from gateway.core.metrics import Metrics
from gateway.store.lua import LuaScript

__all__ = [
    "BudgetScope",
    "BudgetUsage",
    "Grant",
    "Priority",
    "RequestBudget",
    "format_usage",
    "index_key",
    "origin_key",
    "origin_of",
]


class BudgetScope(StrEnum):
    """Which bucket a grant was refused by or a usage row is about (the value is what
    ``ocs-gateway budget`` and the console show, and what the booking script returns)."""

    #: Every request to one OCS origin.
    BASE_URL = "base_url"
    #: The requests of one OCS session.
    SESSION = "session"
    #: The session starts of one channel.
    STARTS = "starts"
    #: A block OCS asked for is in force (a refusal only; no bucket of its own).
    BLOCKED = "blocked"


# The short names the keys use for the bucket scopes.
_KEY_SCOPE = {BudgetScope.BASE_URL: "url", BudgetScope.SESSION: "session", BudgetScope.STARTS: "starts"}
_SCOPE_OF_KEY = {short: scope for scope, short in _KEY_SCOPE.items()}
# The ``scope`` label of ``ocsgw_ocs_budget_refusals_total``: the budget gauges' names.
_REFUSAL_LABEL = {
    BudgetScope.BASE_URL: "origin", BudgetScope.SESSION: "session", BudgetScope.STARTS: "starts",
    BudgetScope.BLOCKED: "blocked",
}

# KEYS: the block keys that apply, then the prefixes of the buckets that apply, then the prefixes
# of their indexes (same order; the script appends the window start it computes from TIME), then
# the set of window sizes in use. ARGV: window_s, how many KEYS are blocks, then per bucket: cap
# (this priority's share), limit, scope, display name, sliding (1 or 0), name in the key.
# Returns {granted 0|1, ms to wait, refusing scope}.
#
# OCS's own limiter counts in aligned windows, so the session and start buckets do too. The
# hosted WAF counts over a sliding five minutes: for the origin bucket the script estimates that
# count as this window's plus the previous window's share of the time not yet elapsed (the usual
# sliding-window counter), so a burst at a window boundary cannot spend the limit twice.
#
# Each booking also counts in a per-window sorted set per scope (score = the bucket's count), so
# the busiest session and the open buckets are read from one key, never found by a SCAN of a
# keyspace full of inboxes and markers. The index and the windows set only ever follow the
# buckets: what is granted depends on the buckets alone.
_ACQUIRE = LuaScript("""
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now_ms = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local nblocks = tonumber(ARGV[2])
local nbuckets = (#KEYS - nblocks - 1) / 2
local blocked = 0
for i = 1, nblocks do
  local ttl = redis.call('PTTL', KEYS[i])
  if ttl > blocked then blocked = ttl end
end
if blocked > 0 then return {0, blocked, 'blocked'} end
local start = sec - sec % window
local start_ms = start * 1000
local end_ms = (start + window) * 1000
local buckets = {}
for j = nblocks + 1, nblocks + nbuckets do
  local a = 3 + (j - nblocks - 1) * 6
  local key = KEYS[j] .. ':' .. start
  local cap = tonumber(ARGV[a])
  local used = tonumber(redis.call('HGET', key, 'n') or '0')
  if used >= cap then return {0, end_ms - now_ms, ARGV[a + 2]} end
  if ARGV[a + 4] == '1' then
    local prev = tonumber(redis.call('HGET', KEYS[j] .. ':' .. (start - window), 'n') or '0')
    local left = 1 - (now_ms - start_ms) / (window * 1000)
    if used + prev * left >= cap then
      -- Wait until the previous window's share has faded enough for one more request.
      local fade_ms = start_ms + window * 1000 * (1 - (cap - used) / prev)
      return {0, math.max(math.ceil(fade_ms - now_ms), 1), ARGV[a + 2]}
    end
  end
  buckets[#buckets + 1] = {key, ARGV[a + 1], ARGV[a + 3], KEYS[j + nbuckets] .. ':' .. start, ARGV[a + 5]}
end
-- Kept one window longer: the next window's sliding estimate (and its gauges) read it.
local keep_ms = end_ms + window * 1000
local opened = false
for _, b in ipairs(buckets) do
  redis.call('ZINCRBY', b[4], 1, b[5])
  if redis.call('HINCRBY', b[1], 'n', 1) == 1 then
    redis.call('HSET', b[1], 'limit', b[2], 'name', b[3], 'ends', end_ms)
    redis.call('PEXPIREAT', b[1], keep_ms)
    redis.call('PEXPIREAT', b[4], keep_ms)
    opened = true
  end
end
if opened then
  local windows = KEYS[#KEYS]
  redis.call('SADD', windows, window)
  -- Only ever lengthened: a bot with a shorter window must not expire a longer one's entry.
  if redis.call('PTTL', windows) < keep_ms - now_ms then redis.call('PEXPIREAT', windows, keep_ms) end
end
return {1, 0, ''}
""")

# A block only ever lengthens: a short Retry-After must not cut a longer one short.
# KEYS: the block, the index of blocks (score: when each ends). ARGV: ms, reason, display name,
# ``scope:name`` in the index. The index lets ``usage`` list blocks without a SCAN.
_BLOCK = LuaScript("""
if redis.replicate_commands then redis.replicate_commands() end
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('HSET', KEYS[1], 'reason', ARGV[2], 'name', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ms)
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now_ms + ms, ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[2], tonumber(last[2]))
end
return 0
""")


class Priority(IntEnum):
    """Who yields first when a bucket runs short (lower value = served longer)."""

    WAITING = 0  # task polls and deliveries of turns a user is waiting on
    SEND = 1  # sends (message/ + upload/) and session starts
    BACKGROUND = 2  # watches of idle sessions


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to ``acquire``: go, or ask again after ``wait_s`` (nothing was booked)."""

    granted: bool
    wait_s: float
    #: Which limit refused (None when granted).
    scope: BudgetScope | None = None


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """One bucket open in the current window, or one block in force (``ocs-gateway budget``)."""

    scope: BudgetScope
    #: The origin for base_url (never credentials), the OCS session id, or the channel.
    name: str
    used: int
    #: 0 when only a block is known (nothing booked in this window).
    limit: int
    resets_in_s: float
    blocked_for_s: float
    reason: str = ""


def origin_of(base_url: str) -> str:
    """``scheme://host[:port]`` of an OCS base URL: the WAF counts requests per host, whatever the
    path, and the origin carries no credentials or query."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme.lower()}://{host}{port}"


def origin_key(base_url: str) -> str:
    """The key part naming the origin of ``base_url`` in its budget buckets and block
    (``Keys.budget_bucket("url", ...)``): a short hash, since an origin holds ``:`` and ``/``."""
    return hashlib.sha1(origin_of(base_url).encode()).hexdigest()[:12]


def index_key(keys: Keys, scope: BudgetScope, window_s: int, window_start: int | None = None) -> str:
    """The per-window index of one scope's buckets (any but ``BLOCKED``):
    a sorted set of the names in the bucket keys, scored by their count, kept as long as the
    buckets. Without ``window_start``, the prefix the budget script completes."""
    return keys.budget_bucket("index", f"{_KEY_SCOPE[scope]}:{window_s}", window_start)


def _windows_key(keys: Keys) -> str:
    # The window sizes booked lately, so ``usage`` knows which indexes to read.
    return keys.budget_bucket("index", "windows")


def _blocks_key(keys: Keys) -> str:
    return keys.budget_bucket("index", "blocks")


def _share(limits: BudgetLimits, priority: Priority) -> float:
    if priority is Priority.BACKGROUND:
        return limits.background_share
    return limits.send_share if priority is Priority.SEND else 1.0


def _cap(limit: int, share: float) -> int:
    # The epsilon keeps 0.7 * 10 at 7, not 6; a share never rounds a bucket down to nothing.
    return max(1, math.floor(limit * share + 1e-9))


class RequestBudget:
    """Books OCS requests against the shared limits; see the module docstring.

    Parameters:
        redis: an asyncio client (the scripts are registered on it once, then sent by SHA).
        keys: the key builder (namespace).
        limits_for: a bot's limits, by bot name (``lambda bot: config.bots[bot].budget``).
        metrics: counts every refusal in ``ocsgw_ocs_budget_refusals_total`` (none when omitted).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        limits_for: Callable[[str], BudgetLimits],
        metrics: Metrics | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._limits_for = limits_for
        self._metrics = metrics

    async def acquire(
        self,
        *,
        bot: str,
        base_url: str,
        priority: Priority,
        session_id: str | None = None,
        start_channel: str | None = None,
    ) -> Grant:
        """Book one request in every bucket that applies, or none.

        Returns:
            ``Grant(True, 0.0)`` when booked; otherwise the refusing scope and the seconds until
            its window ends (or the block lapses).
        """
        limits = self._limits_for(bot)
        share = _share(limits, priority)
        origin = origin_of(base_url)
        url_id = origin_key(base_url)
        window_s = limits.window_s
        blocks = [self._keys.budget_block("url", url_id)]
        prefixes = [self._keys.budget_bucket("url", url_id)]
        indexes = [index_key(self._keys, BudgetScope.BASE_URL, window_s)]
        limit = limits.requests_per_window
        args: list[str | int] = [_cap(limit, share), limit, BudgetScope.BASE_URL, origin, 1, url_id]
        if session_id is not None:
            blocks.append(self._keys.budget_block("session", session_id))
            prefixes.append(self._keys.budget_bucket("session", session_id))
            indexes.append(index_key(self._keys, BudgetScope.SESSION, window_s))
            limit = limits.session_requests_per_window
            args += [_cap(limit, share), limit, BudgetScope.SESSION, session_id, 0, session_id]
        if start_channel is not None:
            blocks.append(self._keys.budget_block("starts", start_channel))
            prefixes.append(self._keys.budget_bucket("starts", start_channel))
            indexes.append(index_key(self._keys, BudgetScope.STARTS, window_s))
            # Only starts use this bucket, so there is no lower priority to hold back for.
            args += [limits.starts_per_window, limits.starts_per_window, BudgetScope.STARTS, start_channel, 0, start_channel]
        granted, wait_ms, scope = await _ACQUIRE(
            self._redis,
            [*blocks, *prefixes, *indexes, _windows_key(self._keys)],
            [window_s, len(blocks), *args],
        )
        if int(granted):
            return Grant(True, 0.0)
        refused_by = BudgetScope(as_text(scope))
        if self._metrics is not None:
            self._metrics.ocs_budget_refusals.labels(bot, _REFUSAL_LABEL[refused_by]).inc()
        return Grant(False, max(int(wait_ms), 1) / 1000.0, refused_by)

    async def block(self, base_url: str, seconds: float, *, reason: str) -> None:
        """Stop every process sending to ``base_url`` for ``seconds`` (OCS 429, WAF 403)."""
        await self._set_block("url", origin_key(base_url), origin_of(base_url), seconds, reason)

    async def block_session(self, session_id: str, seconds: float, *, reason: str = "429") -> None:
        """Stop requests on one OCS session (a 429 from its ``chat_api`` throttle)."""
        await self._set_block("session", session_id, session_id, seconds, reason)

    async def block_starts(self, channel: str, seconds: float, *, reason: str = "429") -> None:
        """Stop session starts on one channel (a 429 from ``start/``, keyed by channel)."""
        await self._set_block("starts", channel, channel, seconds, reason)

    async def _set_block(self, scope: str, key_name: str, name: str, seconds: float, reason: str) -> None:
        if seconds <= 0:
            return
        ms = max(1, math.ceil(seconds * 1000))
        keys = [self._keys.budget_block(scope, key_name), _blocks_key(self._keys)]
        await _BLOCK(self._redis, keys, [ms, reason, name, f"{scope}:{key_name}"])

    async def usage(self) -> list[BudgetUsage]:
        """Every bucket open in its current window and every block in force, base URLs first.

        An operator's view: it reads the indexes the bookings and blocks keep (no SCAN), then every
        bucket they name, so it costs in proportion to the open buckets.
        """
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.smembers(_windows_key(self._keys))
            pipe.zrange(_blocks_key(self._keys), 0, -1)
            (seconds, micros), windows, blocked = await pipe.execute()
        sec = int(seconds)
        now_ms = sec * 1000 + int(micros) // 1000
        listed: list[tuple[str, str, int]] = []  # (short scope, name in the key, window start)
        sizes = sorted(int(w) for w in windows)
        if sizes:
            async with self._redis.pipeline(transaction=False) as pipe:
                for window_s in sizes:
                    for scope in _KEY_SCOPE:
                        pipe.zrange(index_key(self._keys, scope, window_s, sec - sec % window_s), 0, -1)
                members = await pipe.execute()
            at = iter(members)
            for window_s in sizes:
                for short in _KEY_SCOPE.values():
                    listed += [(short, as_text(m), sec - sec % window_s) for m in next(at)]
        block_ids = [as_text(member).split(":", 1) for member in blocked]
        if not listed and not block_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for short, name, start in listed:
                pipe.hmget(self._keys.budget_bucket(short, name, start), ["n", "limit", "name", "ends"])
                pipe.pttl(self._keys.budget_bucket(short, name, start))
            for short, name in block_ids:
                pipe.hmget(self._keys.budget_block(short, name), ["reason", "name"])
                pipe.pttl(self._keys.budget_block(short, name))
            replies = await pipe.execute()
        rows: dict[tuple[str, str], _Row] = {}
        for i, (short, ident, _) in enumerate(listed):
            (count, limit, name, ends), ttl_ms = replies[2 * i], int(replies[2 * i + 1])
            if ttl_ms < 0 or name is None:  # expired between the index and the read
                continue
            ends_ms = int(ends or 0) or now_ms + ttl_ms
            if ends_ms <= now_ms:
                continue
            row = rows.setdefault((_SCOPE_OF_KEY[short], ident), _Row(_SCOPE_OF_KEY[short], as_text(name)))
            row.used, row.limit, row.resets_ms = int(count or 0), int(limit or 0), ends_ms - now_ms
        offset = 2 * len(listed)
        for i, (short, ident) in enumerate(block_ids):
            (reason, name), ttl_ms = replies[offset + 2 * i], int(replies[offset + 2 * i + 1])
            if ttl_ms < 0 or name is None or short not in _SCOPE_OF_KEY:  # lapsed since it was indexed
                continue
            row = rows.setdefault((_SCOPE_OF_KEY[short], ident), _Row(_SCOPE_OF_KEY[short], as_text(name)))
            row.blocked_ms, row.reason = ttl_ms, as_text(reason or b"")
        order = {BudgetScope.BASE_URL: 0, BudgetScope.STARTS: 1, BudgetScope.SESSION: 2}
        usage = [row.freeze() for row in rows.values()]
        return sorted(usage, key=lambda u: (order[u.scope], -u.used, u.name))


@dataclass(slots=True)
class _Row:
    """A bucket and its block, gathered from several keys while ``usage`` reads them."""

    scope: BudgetScope
    name: str
    used: int = 0
    limit: int = 0
    resets_ms: int = 0
    blocked_ms: int = 0
    reason: str = ""

    def freeze(self) -> BudgetUsage:
        return BudgetUsage(
            self.scope, self.name, self.used, self.limit, self.resets_ms / 1000.0, self.blocked_ms / 1000.0, self.reason
        )


def format_usage(rows: list[BudgetUsage]) -> str:
    """The ``ocs-gateway budget`` table: used / limit, time to reset, block in force."""
    if not rows:
        return "no OCS requests booked in the current window, and no blocks"
    table = [("scope", "name", "used / limit", "resets in", "blocked")]
    for row in rows:
        share = f"{row.used} / {row.limit}" if row.limit else "-"
        resets = f"{row.resets_in_s:.0f} s" if row.limit else "-"
        blocked = f"{row.blocked_for_s:.1f} s ({row.reason})" if row.blocked_for_s > 0 else "-"
        table.append((row.scope, row.name, share, resets, blocked))
    widths = [max(len(line[c]) for line in table) for c in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line[:4], widths)) + "  " + line[4] for line in table
    )
