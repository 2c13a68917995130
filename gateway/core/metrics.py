"""The gateway's Prometheus metrics, one ``Metrics`` object per process.

Each ``Metrics`` holds its own ``CollectorRegistry`` (never prometheus_client's global one), so
one test process can build many apps and see each one's counters move by exact amounts, and a
process exposes only what it measured. Components receive the object explicitly (``Services``);
there are no module-level metric objects.

Labels are bounded sets: channel and bot names from the configuration, fixed outcome words, HTTP
status codes. Never a user, conversation, session or event id. The names are a contract with
the dashboards and alert rules in ``deploy/``: add metrics, do not rename these.

The gauges named ``ocsgw_*`` without a process-local meaning (in-flight turns, inbox depth,
dead letters, watches, workers alive, budget use) are read from Redis just before each scrape
(``gateway/observe/gauges.py``): every process reports the same figures, so aggregate them with
``max`` rather than ``sum``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = [
    "AUDIO_DIRECTIONS", "HOUSEKEEPING_TASKS", "INBOUND_OUTCOMES", "Metrics", "OCS_ENDPOINTS", "OCS_STATUSES",
    "SEND_OUTCOMES", "SPEECH_CALLS", "TRANSCRIPTION_OUTCOMES", "VOICE_REPLY_OUTCOMES", "ocs_status_label",
]

#: ``ocsgw_inbound_requests_total{outcome}``: what the edge (or a listener) did with a request.
INBOUND_OUTCOMES = (
    "accepted", "duplicate", "ignored", "invalid_signature", "invalid_payload", "too_large",
    "unknown_channel", "unavailable", "error", "client_disconnected",
)
#: ``ocsgw_ocs_requests_total{endpoint}``: the OCS API calls the client makes.
OCS_ENDPOINTS = ("token", "start", "send", "task", "messages", "session", "end", "upload", "file", "probe")
#: ``ocsgw_ocs_requests_total{status}``: the HTTP statuses counted as themselves. Any other code
#: counts under its class ("4xx", "5xx": a misbehaving proxy may answer any three digits, and
#: each would be a new series per bot and endpoint), still matched by ``status=~"5.."``; a code
#: outside 100-599 counts as "other".
OCS_STATUSES = frozenset({200, 201, 202, 204, 400, 401, 403, 404, 409, 410, 413, 429, 500, 502, 503, 504})
#: ``ocsgw_platform_sends_total{outcome}``.
SEND_OUTCOMES = ("ok", "rate_limited", "gone", "rejected", "error")
#: ``ocsgw_housekeeping_*_total{task}``: the worker runner's background loops.
HOUSEKEEPING_TASKS = ("sweep", "renew", "watch", "heartbeat", "probe")
#: ``ocsgw_transcriptions_total{outcome}``: what became of one voice note (docs/VOICE.md). ``ok``:
#: words reached OCS; ``unavailable``/``rate_limited``: the service failed this try (the turn
#: retries); ``auth_failed``: it refused the key; ``rejected``: it refused the audio; ``too_large``,
#: ``too_long``, ``unreadable``, ``empty``: not heard; ``unfetched``: the platform would not give
#: the file; ``unconfigured``: the bot has no speech service.
TRANSCRIPTION_OUTCOMES = (
    "ok", "unavailable", "rate_limited", "auth_failed", "rejected", "too_large", "too_long", "unreadable", "empty",
    "unfetched", "unconfigured",
)
#: ``ocsgw_voice_replies_total{outcome}``: ``ok`` posted; ``unavailable``/``rate_limited``: this try
#: failed (retried, then skipped); ``auth_failed``, ``rejected``: the speech service refused;
#: ``undeliverable``: the platform refused the voice note. The written answer went out in every case.
VOICE_REPLY_OUTCOMES = ("ok", "unavailable", "rate_limited", "auth_failed", "rejected", "undeliverable")
#: ``ocsgw_speech_api_seconds{call}`` and ``ocsgw_audio_seconds_total{direction}``.
SPEECH_CALLS = ("transcribe", "synthesize")
AUDIO_DIRECTIONS = ("in", "out")



def ocs_status_label(status: int) -> str:
    """The ``status`` label of ``ocsgw_ocs_requests_total`` for an HTTP status (see ``OCS_STATUSES``)."""
    if status in OCS_STATUSES:
        return str(status)
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


# A platform waits seconds for its acknowledgement (Slack 3 s, Telegram retries after ~60 s):
# the interesting range is milliseconds to a few seconds.
_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# What a user waits for: from tens of milliseconds (the gateway's own delay) to OCS's slowest
# answers (task_timeout_s defaults to minutes).
_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0)
# A speech call: a short note transcribes in well under a second, a long one or a long answer's
# speech takes tens of seconds (the per-call bound, ``speech.timeout_s``, defaults to 60).
_SPEECH_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0)
# Task polls per turn: one or two when the schedule fits the bot, dozens when it does not.
_POLL_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100)


class Metrics:
    """Every metric of one process, on a registry of its own.

    Parameters:
        registry: where to register (a fresh one when omitted).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        # -- inbound (edge and listeners) ---------------------------------------------------
        self.inbound_requests = Counter(
            "ocsgw_inbound_requests", "Inbound platform requests (or listener events) by what became of them.",
            ["channel", "kind", "outcome"], registry=r,
        )
        self.inbound_ack_seconds = Histogram(
            "ocsgw_inbound_ack_seconds", "Time from an inbound request's arrival to its response being ready.",
            ["channel"], buckets=_ACK_BUCKETS, registry=r,
        )
        # -- OCS ------------------------------------------------------------------------
        self.ocs_requests = Counter(
            "ocsgw_ocs_requests", "Requests to OCS by endpoint and HTTP status ('error': transport failure, "
            "'waf': the hosted WAF's HTML 403).", ["bot", "endpoint", "status"], registry=r,
        )
        self.ocs_token_refreshes = Counter(
            "ocsgw_ocs_token_refreshes", "OAuth access tokens fetched from OCS.", ["bot"], registry=r,
        )
        self.ocs_budget_used = Gauge(
            "ocsgw_ocs_budget_used", "OCS requests the budget gate counts: origin, the sliding estimate over "
            "the window; session (the busiest session) and starts (the busiest channel), the larger of this and "
            "the previous window.", ["bot", "scope"], registry=r,
        )
        self.ocs_budget_limit = Gauge(
            "ocsgw_ocs_budget_limit", "The OCS request budget's limit per window.", ["bot", "scope"], registry=r,
        )
        self.ocs_budget_refusals = Counter(
            "ocsgw_ocs_budget_refusals", "OCS requests the budget gate refused (each waits and asks again), by "
            "the limit that refused: origin, session, starts, or blocked (a 429 or WAF block in force).",
            ["bot", "scope"], registry=r,
        )
        # -- turns ----------------------------------------------------------------------
        self.task_polls_per_turn = Histogram(
            "ocsgw_task_polls_per_turn", "Task polls a turn made before OCS had its answer.",
            ["bot"], buckets=_POLL_BUCKETS, registry=r,
        )
        self.messages_per_turn = Histogram(
            "ocsgw_messages_per_turn", "User messages one OCS turn carried (a burst goes as one).",
            ["bot"], buckets=(1, 2, 3, 5, 10, 20), registry=r,
        )
        self.reply_delay_seconds = Histogram(
            "ocsgw_reply_delay_seconds", "Time from OCS completing a task to the platform accepting the "
            "answer's first part.", ["bot"], buckets=_WAIT_BUCKETS, registry=r,
        )
        self.turn_seconds = Histogram(
            "ocsgw_turn_seconds", "Time from an inbound message's arrival to its turn being settled.",
            ["bot", "outcome"], buckets=_WAIT_BUCKETS, registry=r,
        )
        self.platform_sends = Counter(
            "ocsgw_platform_sends", "Message parts handed to a platform, by outcome.", ["channel", "outcome"], registry=r,
        )
        self.delivery_receipts = Counter(
            "ocsgw_delivery_receipts", "Delivery statuses a platform reported for messages sent ("
            "sent, delivered, read, failed; 'other' for any other word); a repeated webhook counts again.",
            ["channel", "status"], registry=r,
        )
        self.pacing_waits = Counter(
            "ocsgw_pacing_waits", "Sends that waited for their pacing slot.", ["channel"], registry=r,
        )
        # -- speech (docs/VOICE.md) ------------------------------------------------------
        self.transcriptions = Counter(
            "ocsgw_transcriptions", "Voice notes from users, by what became of them (one count per try).",
            ["bot", "outcome"], registry=r,
        )
        self.voice_replies = Counter(
            "ocsgw_voice_replies", "Answers spoken as voice notes, by outcome (one count per try).",
            ["bot", "outcome"], registry=r,
        )
        self.audio_seconds = Counter(
            "ocsgw_audio_seconds", "Seconds of audio transcribed ('in') and spoken ('out').",
            ["bot", "direction"], registry=r,
        )
        self.speech_api_seconds = Histogram(
            "ocsgw_speech_api_seconds", "Time one call to the speech service took, failures included.",
            ["bot", "call"], buckets=_SPEECH_BUCKETS, registry=r,
        )
        # -- read from Redis at scrape time ---------------------------------------------
        self.turns_in_flight = Gauge(
            "ocsgw_turns_in_flight", "Conversations with work, by the state of their current turn "
            "('queued': an inbox item no turn has begun).", ["state"], registry=r,
        )
        self.active_conversations = Gauge(
            "ocsgw_active_conversations", "Conversations with work (the sweeper's active set).", registry=r,
        )
        self.inbox_depth = Gauge(
            "ocsgw_inbox_depth", "Inbound messages waiting in all inboxes (the current turns included).", registry=r,
        )
        self.oldest_waiting_turn_age_seconds = Gauge(
            "ocsgw_oldest_waiting_turn_age_seconds", "Age of the oldest inbound message still in an inbox.", registry=r,
        )
        self.dead_letters = Gauge("ocsgw_dead_letters", "Turns parked in the dead-letter store.", registry=r)
        self.watched_sessions = Gauge(
            "ocsgw_watched_sessions", "OCS sessions watched for bot-initiated messages.", registry=r,
        )
        self.workers_alive = Gauge(
            "ocsgw_workers_alive", "Worker processes whose heartbeat is fresh and whose housekeeping sweep is not stale.", registry=r
        )
        self.gauges_refresh_errors = Counter(
            "ocsgw_gauges_refresh_errors", "Scrapes whose Redis-backed gauges could not be refreshed.", registry=r,
        )
        # -- worker housekeeping --------------------------------------------------------
        self.housekeeping_ticks = Counter(
            "ocsgw_housekeeping_ticks", "Completed ticks of the worker's background loops.", ["task"], registry=r,
        )
        self.housekeeping_errors = Counter(
            "ocsgw_housekeeping_errors", "Ticks of the worker's background loops that failed (the next one runs).",
            ["task"], registry=r,
        )
        for task in HOUSEKEEPING_TASKS:
            # Present from the start at 0, so rate() and alerts see the series before a failure.
            self.housekeeping_ticks.labels(task)
            self.housekeeping_errors.labels(task)

        # The edge's children, by label values: ``labels()`` takes a lock and checks its arguments
        # on every call, a cost every inbound request paid twice (bench/bench_ingest.py).
        self._inbound_children: dict[tuple[str, str, str], Any] = {}
        self._ack_children: dict[str, Any] = {}

    def count_inbound(self, channel: str, kind: str, outcome: str, ack_s: float | None = None) -> None:
        """One inbound request or listener event: its outcome and, for HTTP, its ack time."""
        key = (channel, kind, outcome)
        counter = self._inbound_children.get(key)
        if counter is None:
            counter = self._inbound_children[key] = self.inbound_requests.labels(channel, kind, outcome)
        counter.inc()
        if ack_s is not None:
            histogram = self._ack_children.get(channel)
            if histogram is None:
                histogram = self._ack_children[channel] = self.inbound_ack_seconds.labels(channel)
            histogram.observe(ack_s)

    def render(self) -> tuple[bytes, str]:
        """The exposition (Prometheus text format) and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
