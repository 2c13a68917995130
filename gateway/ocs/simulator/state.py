"""In-memory state and behaviour knobs of the OCS simulator (pure Python, no HTTP).

Section numbers (§) refer to docs/OCS.md. The "worker" that answers
messages is simulated lazily: every read first replays the task events whose time has
come (``advance``), so no background task is needed and the same code works under
httpx's ASGITransport, under uvicorn and with a manual clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import random
import secrets
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from gateway.ocs.simulator.latency import LatencyModel

Clock = Callable[[], datetime]
CredentialMode = Literal["oauth", "embed_key"]
TaskOutcome = Literal["complete", "user_error", "internal_error"]
Role = Literal["user", "assistant", "system"]

# §2.3: the nine scopes a client-credentials app may request.
__all__ = [
    "DEMO_CHATBOT_ID",
    "ForcedFailure",
    "ROUTE_NAMES",
    "RateInfo",
    "SimChatbot",
    "SimFile",
    "SimMessage",
    "SimOAuthApp",
    "SimReceived",
    "SimSession",
    "SimTask",
    "SimToken",
    "SimulatorKnobs",
    "SimulatorState",
    "format_timestamp",
    "utc_now",
]

ALL_SCOPES = frozenset({
    "chatbots:read", "chatbots:interact", "chat:start", "sessions:read", "sessions:write",
    "files:read", "participants:read", "participants:write", "usage:read",
})
SEVEN_DAYS_S = 7 * 24 * 3600  # §2.5 CHAT_SESSION_TOKEN_LIFETIME
ONE_DAY = timedelta(days=1)  # §4.3 task binding / result expiry, §3.3 unused-upload expiry
MICROSECOND = timedelta(microseconds=1)
DEMO_CHATBOT_ID = "6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23"
#: Route names used by ``request_counts``, ``fail_next`` and ``drop_after_accept``.
ROUTE_NAMES = ("end", "files", "message", "session_get", "session_list", "session_poll", "start", "tags",
               "task_poll", "token", "upload")


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_timestamp(value: datetime) -> str:
    """§1/§8.10: DRF renders UTC ISO-8601 with ``Z``; microseconds only when non-zero."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class SimulatorKnobs:
    """Behaviour switches; mutable at runtime (``state.knobs.reply_latency_s = 0``)."""
    reply_latency_s: float = 0.05  # acceptance -> reply; the user message lands halfway
    reply_latency: LatencyModel | None = None  # when set, replaces reply_latency_s (seeded draws)
    latency_seed: int = 0  # changing it at runtime restarts the latency draws from this seed
    rtt_s: float = 0.0  # network round trip added to every HTTP exchange (half in, half out)
    waf_limit: int | None = None  # §3.2 per-IP requests per sliding window; None = no rate rule
    waf_window_s: float = 300  # §3.2 look-back window (the AWS default, 5 min)
    token_lifetime_s: int = 36000  # §2.3 DOT default
    require_user_agent: bool = True  # §1/§3.2 WAF NoUserAgent_HEADER on /api/
    progress_text: str | None = None  # §4.3 progress line while a task runs
    # §4.3 progress lines that follow one another while a task runs, one every progress_every_s
    # from its acceptance (the last one stays); OCS changes a task's line at most every 5 s.
    progress_lines: tuple[str, ...] = ()
    progress_every_s: float = 5.0
    reply_attachments: bool = False  # attach a generated file to every reply (§4.3 example)
    enforce_rate_limit: bool = False  # §3.1 RATE_LIMIT_ENFORCE is off by default
    chat_rate_limit: int = 300  # §3.1 chat_api scope
    credentials_rate_limit: int = 100  # §3.1 credentials scope (/o/token/)
    rate_window_s: int = 300
    task_user_error_rate: float = 0.0  # fraction of tasks ending in a 400 (seeded RNG)
    task_internal_error_rate: float = 0.0  # fraction of tasks ending in a 500
    task_error_seed: int = 0
    user_error_text: str = "Sorry, I can't help with that right now."
    internal_error_text: str = "Sorry, something went wrong while processing your message."
    max_upload_mb: float = 50  # §3.3 per file and per request
    oidc_enabled: bool = False  # §2.3: with OIDC on, a token request without scope fails


@dataclass
class SimChatbot:
    """A chatbot (working version) plus its Chat API Channel (§2.4.2, §8 state)."""
    id: str
    name: str = "Demo bot"
    team: str = "demo"
    credential_mode: CredentialMode = "embed_key"  # §2.4.2 default
    embed_key: str | None = None
    allowed_domains: list[str] = field(default_factory=list)
    keyless_allowed: bool = True  # §2.4.4 still open at this commit
    session_token_lifetime_s: float = SEVEN_DAYS_S
    enabled: bool = True
    disabled_message: str | None = None
    version_number: int = 1  # §4.1: a bot without releases shows 1 and no versions
    versions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SimOAuthApp:
    client_id: str
    client_secret: str
    team: str = "demo"
    allowed_chatbots: list[str] = field(default_factory=list)  # §2.3: empty = no chatbot


@dataclass
class SimToken:
    token: str
    client_id: str
    team: str
    scopes: frozenset[str]
    expires_at: datetime


@dataclass
class SimFile:
    id: int
    team: str
    session_id: str | None
    name: str
    content_type: str
    data: bytes
    purpose: Literal["upload", "generated"]
    created_at: datetime
    attached: bool = False

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class SimMessage:
    created_at: datetime
    role: Role
    content: str
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    file_ids: list[int] = field(default_factory=list)


@dataclass
class SimReceived:
    """A ``message/`` call as accepted (for "OCS got this exactly once" assertions)."""
    text: str
    attachment_ids: list[int]
    context: dict[str, Any] | None
    task_id: str
    received_at: datetime


@dataclass
class SimTask:
    id: str
    session_id: str
    seq: int
    text: str
    attachment_ids: list[int]
    context: dict[str, Any] | None
    outcome: TaskOutcome
    accepted_at: datetime
    start_at: datetime
    finish_at: datetime
    started: bool = False
    finished: bool = False
    echo_number: int = 0  # user messages in history when the worker picked it up
    reply: SimMessage | None = None


@dataclass
class SimSession:
    id: str
    chatbot_id: str
    team: str
    identifier: str
    remote_id: str
    name: str
    platform: str
    created_at: datetime
    status: str = "active"
    updated_at: datetime | None = None
    ended_at: datetime | None = None
    state: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    messages: list[SimMessage] = field(default_factory=list)
    received: list[SimReceived] = field(default_factory=list)
    pending_task_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RateInfo:
    limit: int
    remaining: int
    reset_s: int
    exceeded: bool


@dataclass(frozen=True)
class ForcedFailure:
    status: int
    retry_after: int | None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class SimulatorState:
    """Everything the fake OCS knows, plus introspection helpers for tests."""

    def __init__(self, knobs: SimulatorKnobs | None = None, base_url: str = "http://testserver",
                 clock: Clock | None = None) -> None:
        self.knobs = knobs or SimulatorKnobs()
        self.base_url = base_url.rstrip("/")
        self.clock: Clock = clock or utc_now
        self.chatbots: dict[str, SimChatbot] = {}
        self.oauth_apps: dict[str, SimOAuthApp] = {}
        self.api_keys: dict[str, str] = {}  # key -> team (§2.2; always write-enabled here)
        self.tokens: dict[str, SimToken] = {}
        self.sessions: dict[str, SimSession] = {}
        self.tasks: dict[str, SimTask] = {}
        self.files: dict[int, SimFile] = {}
        self._request_counts: Counter[str] = Counter()
        self._waf_hits: dict[str, deque[float]] = {}
        self._waf_blocked = 0
        self._drops: Counter[str] = Counter()
        self._drops_before: Counter[str] = Counter()
        self._finish_times: dict[str, datetime] = {}  # task id -> reply available (outlives a restart)
        self._latency_seed = self.knobs.latency_seed
        self._latency_rng = random.Random(self._latency_seed)
        self._signing_key = secrets.token_bytes(32)
        self._rng = random.Random(self.knobs.task_error_seed)
        self._forced_failures: dict[str, deque[ForcedFailure]] = {}
        self._forced_outcomes: deque[TaskOutcome] = deque()
        self._buckets: dict[str, tuple[int, int]] = {}
        self._next_file_id = 8800
        self._task_seq = 0
        self._lock = threading.RLock()  # tests may poke the state from another thread

    # ----------------------------------------------------------------- configuration
    @classmethod
    def demo(cls, base_url: str, knobs: SimulatorKnobs | None = None) -> SimulatorState:
        """The quickstart's fake OCS: one server-only oauth bot and its client app."""
        state = cls(knobs=knobs, base_url=base_url)
        state.add_chatbot(SimChatbot(id=DEMO_CHATBOT_ID, name="Demo bot", credential_mode="oauth"))
        state.add_oauth_app(SimOAuthApp(client_id="demo-client", client_secret="demo-secret",
                                        allowed_chatbots=[DEMO_CHATBOT_ID]))
        return state

    def add_chatbot(self, chatbot: SimChatbot) -> SimChatbot:
        self.chatbots[str(uuid.UUID(chatbot.id))] = chatbot
        return chatbot

    def add_oauth_app(self, app: SimOAuthApp) -> SimOAuthApp:
        self.oauth_apps[app.client_id] = app
        return app

    def add_api_key(self, key: str, team: str = "demo") -> None:
        self.api_keys[key] = team

    # ------------------------------------------------------------------------ OAuth
    def authenticate_client(self, client_id: str, secret: str) -> SimOAuthApp | None:
        app = self.oauth_apps.get(client_id)
        if app is None or not hmac.compare_digest(app.client_secret, secret):
            return None
        return app

    def issue_token(self, app: SimOAuthApp, scopes: frozenset[str]) -> SimToken:
        expires = self.clock() + timedelta(seconds=self.knobs.token_lifetime_s)
        token = SimToken(secrets.token_urlsafe(24), app.client_id, app.team, scopes, expires)
        self.tokens[token.token] = token
        return token

    def valid_token(self, raw: str) -> SimToken | None:
        """A live token or None (unknown, revoked and expired look the same, §2.3)."""
        token = self.tokens.get(raw)
        return token if token is not None and token.expires_at > self.clock() else None

    # --------------------------------------------------------------- session tokens
    def sign_session_token(self, session_id: str) -> str:
        """§2.5: Django-``dumps``-like ``payload:timestamp:signature`` (opaque to clients)."""
        payload = _b64(json.dumps({"sid": session_id}, separators=(",", ":")).encode())
        value = f"{payload}:{int(self.clock().timestamp()):x}"
        return f"{value}:{self._signature(value)}"

    def session_token_matches(self, token: str, session_id: str) -> bool:
        """Signature valid and ``sid`` equals the path session id (§2.5 validation)."""
        parts = token.split(":")
        if len(parts) != 3 or not hmac.compare_digest(parts[2], self._signature(":".join(parts[:2]))):
            return False
        try:
            data = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
        except ValueError:
            return False
        return isinstance(data, dict) and data.get("sid") == session_id

    def _signature(self, value: str) -> str:
        return _b64(hmac.new(self._signing_key, value.encode(), hashlib.sha256).digest())

    def session_expired(self, session: SimSession) -> bool:
        """§2.5: absolute age since creation; activity does not extend it."""
        lifetime = timedelta(seconds=self.chatbots[session.chatbot_id].session_token_lifetime_s)
        return self.clock() - session.created_at > lifetime

    def expire_session(self, session_id: str) -> None:
        """Test helper: age the session past its token lifetime."""
        session = self.sessions[session_id]
        lifetime = self.chatbots[session.chatbot_id].session_token_lifetime_s
        session.created_at = self.clock() - timedelta(seconds=lifetime + 1)

    # ---------------------------------------------------------------------- sessions
    def create_session(self, chatbot: SimChatbot, remote_id: str, name: str | None,
                       platform: str) -> SimSession:
        """§0.7: every start makes a fresh ``anon:<uuid4>`` participant."""
        now = self.clock()
        session = SimSession(
            id=str(uuid.uuid4()), chatbot_id=chatbot.id, team=chatbot.team,
            identifier=f"anon:{uuid.uuid4()}", remote_id=remote_id, name=name or "Anonymous",
            platform=platform, created_at=now, updated_at=now)
        self.sessions[session.id] = session
        return session

    def end_session(self, session: SimSession) -> None:
        """§4.8: the API only moves the session to ``pending-review``."""
        self.advance(session)
        session.status, session.ended_at, session.updated_at = "pending-review", self.clock(), self.clock()

    def complete_session(self, session_id: str) -> None:
        """Finish the session as OCS's web-chat review form does, the one way to status
        ``complete`` (docs/OCS.md §6.1; no API reaches it): ``message/`` and ``upload/`` then answer 400
        ``{"error": "Session has ended"}`` and the session poll says ``session_status: "ended"``.
        Tasks already accepted still run."""
        with self._lock:
            session = self.sessions[session_id]
            self.advance(session)
            now = self.clock()
            session.status, session.updated_at = "complete", now
            session.ended_at = session.ended_at or now

    def push_bot_message(self, session_id: str, text: str,
                         metadata: dict[str, Any] | None = None) -> SimMessage:
        """§6.5: an unsolicited assistant message (scheduled/trigger), poll-only."""
        session = self.sessions[session_id]
        self.advance(session)
        return self._append(session, "assistant", text, self.clock(), metadata or {})

    def _append(self, session: SimSession, role: Role, content: str, at: datetime,
                metadata: dict[str, Any], file_ids: list[int] | None = None) -> SimMessage:
        """Append keeping ``created_at`` strictly increasing (§6.3 cursor safety)."""
        with self._lock:
            if session.messages and at <= session.messages[-1].created_at:
                at = session.messages[-1].created_at + MICROSECOND
            message = SimMessage(at, role, content, metadata, [], list(file_ids or []))
            session.messages.append(message)
            session.updated_at = at
            return message

    # ------------------------------------------------------------------------- tasks
    def accept_message(self, session: SimSession, text: str, attachment_ids: list[int],
                       context: dict[str, Any] | None) -> SimTask:
        """§4.2: queue a task; history changes only when the simulated worker runs."""
        now = self.clock()
        latency = timedelta(seconds=max(0.0, self.sample_reply_latency()))
        self._task_seq += 1
        task = SimTask(str(uuid.uuid4()), session.id, self._task_seq, text, list(attachment_ids),
                       context, self._next_outcome(), now, now + latency / 2, now + latency)
        self.tasks[task.id] = task
        self._finish_times[task.id] = task.finish_at
        session.pending_task_ids.append(task.id)
        session.received.append(SimReceived(text, list(attachment_ids), context, task.id, now))
        return task

    def sample_reply_latency(self) -> float:
        """The next reply latency: ``knobs.reply_latency`` if set, else ``reply_latency_s``."""
        model = self.knobs.reply_latency
        if model is None:
            return self.knobs.reply_latency_s
        with self._lock:
            if self.knobs.latency_seed != self._latency_seed:
                self._latency_seed = self.knobs.latency_seed
                self._latency_rng = random.Random(self._latency_seed)
            return model.sample(self._latency_rng)

    def task_completed_at(self, task_id: str) -> float | None:
        """Epoch seconds (``time.time()`` scale under the real clock) at which the task's result
        became pollable; None while it is still running. The worker is replayed lazily, so this
        is the moment a poll *would* have seen it, not when one did: the start of "OCS done ->
        platform send". Kept across ``forget_sessions`` so a benchmark can still read it."""
        finish_at = self._finish_times[task_id]
        return finish_at.timestamp() if finish_at <= self.clock() else None

    def completed_tasks(self) -> dict[str, float | None]:
        """``task_completed_at`` for every task accepted so far."""
        with self._lock:
            return {task_id: self.task_completed_at(task_id) for task_id in list(self._finish_times)}

    def finish_task_now(self, task_id: str) -> None:
        """Test helper: the worker answers ``task_id`` now, however long its latency was. A test
        gives a message a latency it will never sit out, then releases it once it has seen what
        must happen while that task runs."""
        now = self.clock()
        with self._lock:
            task = self.tasks[task_id]
            task.start_at, task.finish_at = min(task.start_at, now), min(task.finish_at, now)
            self._finish_times[task_id] = task.finish_at

    def fail_next_tasks(self, outcome: TaskOutcome, count: int = 1) -> None:
        """Make the next ``count`` accepted tasks end with ``outcome``."""
        self._forced_outcomes.extend([outcome] * count)

    def _next_outcome(self) -> TaskOutcome:
        if self._forced_outcomes:
            return self._forced_outcomes.popleft()
        roll = self._rng.random()
        if roll < self.knobs.task_user_error_rate:
            return "user_error"
        if roll < self.knobs.task_user_error_rate + self.knobs.task_internal_error_rate:
            return "internal_error"
        return "complete"

    def advance(self, session: SimSession) -> None:
        """Replay due worker events (start, then finish) in time order."""
        now = self.clock()
        with self._lock:
            events: list[tuple[datetime, int, int, SimTask]] = []
            for task in (self.tasks[tid] for tid in session.pending_task_ids):
                if not task.started and task.start_at <= now:
                    events.append((task.start_at, task.seq, 0, task))
                if task.finish_at <= now:
                    events.append((task.finish_at, task.seq, 1, task))
            for at, _, stage, task in sorted(events, key=lambda e: e[:3]):
                if stage == 0:
                    self._worker_start(session, task, at)
                else:
                    self._worker_finish(session, task, at)

    def _worker_start(self, session: SimSession, task: SimTask, at: datetime) -> None:
        # §6.1: the activation stage flips pending-review back to active.
        if session.status == "pending-review":
            session.status = "active"
        if task.context is not None:
            session.state["remote_context"] = task.context  # §4.2 overwrite, not merge
        metadata = {"ocs_attachment_file_ids": task.attachment_ids} if task.attachment_ids else {}
        self._append(session, "user", task.text, at, metadata, task.attachment_ids)
        for file_id in task.attachment_ids:
            self.files[file_id].attached = True
        task.echo_number = sum(1 for m in session.messages if m.role == "user")
        task.started = True

    def _worker_finish(self, session: SimSession, task: SimTask, at: datetime) -> None:
        task.finished = True
        session.pending_task_ids.remove(task.id)
        if task.outcome != "complete":
            return
        count = task.echo_number
        text = f"Echo #{count}: {task.text}"
        if task.attachment_ids:
            text += "\nAttachments: " + ", ".join(self.files[i].name for i in task.attachment_ids)
        metadata: dict[str, Any] = {}
        file_ids: list[int] = []
        if self.knobs.reply_attachments:
            generated = self._new_file(session, f"reply-{count}.txt", "text/plain",
                                       text.encode(), "generated")
            metadata["generated_files"], file_ids = [generated.id], [generated.id]
        task.reply = self._append(session, "assistant", text, at, metadata, file_ids)

    def task_expired(self, task: SimTask) -> bool:
        return self.clock() - task.accepted_at > ONE_DAY

    # ------------------------------------------------------------------------- files
    def store_uploads(self, session: SimSession, items: list[tuple[str, str, bytes]]) -> list[SimFile]:
        return [self._new_file(session, name, ctype, data, "upload") for name, ctype, data in items]

    def _new_file(self, session: SimSession, name: str, content_type: str, data: bytes,
                  purpose: Literal["upload", "generated"]) -> SimFile:
        with self._lock:
            self._next_file_id += 1
            file = SimFile(self._next_file_id, session.team, session.id, name, content_type,
                           data, purpose, self.clock())
            self.files[file.id] = file
            return file

    def attachments_valid(self, session: SimSession, ids: list[int]) -> bool:
        """§4.2: ids uploaded to this session, unexpired, each at most once."""
        if len(set(ids)) != len(ids):
            return False
        for file_id in ids:
            file = self.files.get(file_id)
            if file is None or file.session_id != session.id or file.purpose != "upload":
                return False
            if not file.attached and self.clock() - file.created_at > ONE_DAY:
                return False
        return True

    # ------------------------------------------------------------------ rate limits
    def hit_bucket(self, key: str, limit: int) -> RateInfo:
        """§3.1: aligned fixed windows; every call counts."""
        now = self.clock().timestamp()
        window = self.knobs.rate_window_s
        start = int(now - now % window)
        bucket_start, count = self._buckets.get(key, (start, 0))
        count = count + 1 if bucket_start == start else 1
        self._buckets[key] = (start, count)
        reset = max(1, math.ceil(start + window - now))
        return RateInfo(limit, max(0, limit - count), reset, count > limit)

    def fail_next(self, route: str, status: int = 503, count: int = 1,
                  retry_after: int | None = None) -> None:
        """Force the next ``count`` calls of ``route`` to answer ``status`` (outage drills)."""
        if retry_after is None and status == 429:
            retry_after = 30  # a 429 without Retry-After would be unlike OCS (§3.1)
        failure = ForcedFailure(status, retry_after)
        self._forced_failures.setdefault(route, deque()).extend([failure] * count)

    def take_forced_failure(self, route: str) -> ForcedFailure | None:
        queue = self._forced_failures.get(route)
        return queue.popleft() if queue else None

    # ------------------------------------------------------------------ fault drills
    def drop_after_accept(self, route: str = "message", count: int = 1) -> None:
        """The next ``count`` calls of ``route`` that OCS accepts (2xx) take full effect (task
        queued, session started, files stored), then the connection is cut with no response:
        the client cannot tell whether OCS got the request (issue 7, "duplicate sends")."""
        if route not in ROUTE_NAMES:
            raise ValueError(f"unknown route {route!r}; one of {ROUTE_NAMES}")
        with self._lock:
            self._drops[route] += count

    def drop_before_accept(self, route: str = "message", count: int = 1) -> None:
        """The next ``count`` calls of ``route`` are cut before OCS processes them: the request
        left the client whole, the connection closes with no response and nothing happened on
        this side (counted in ``request_counts``, as what the client sent; no rate bucket, no
        state). The client cannot tell this from ``drop_after_accept``."""
        if route not in ROUTE_NAMES:
            raise ValueError(f"unknown route {route!r}; one of {ROUTE_NAMES}")
        with self._lock:
            self._drops_before[route] += count

    def take_drop_before(self, route: str) -> bool:
        """Consume one pending ``drop_before_accept`` for ``route`` (called before the route runs)."""
        with self._lock:
            if self._drops_before[route] <= 0:
                return False
            self._drops_before[route] -= 1
            return True

    def take_drop(self, route: str) -> bool:
        """Consume one pending drop for ``route`` (called once the route has accepted)."""
        with self._lock:
            if self._drops[route] <= 0:
                return False
            self._drops[route] -= 1
            return True

    def waf_admits(self, client_ip: str) -> bool:
        """§3.2 per-IP rate rule over a sliding look-back window. Every request counts, blocked
        ones too (the rule counts what it evaluates), so a client that keeps hammering stays
        blocked; the simulator is exact where AWS only approximates the rate."""
        limit = self.knobs.waf_limit
        if limit is None:
            return True
        now = self.clock().timestamp()
        with self._lock:
            hits = self._waf_hits.setdefault(client_ip, deque())
            while hits and hits[0] <= now - self.knobs.waf_window_s:
                hits.popleft()
            hits.append(now)
            if len(hits) <= limit:
                return True
            self._waf_blocked += 1
            return False

    def forget_sessions(self) -> None:
        """OCS restarted empty (issue 8): sessions, tasks and files are gone; chatbots, OAuth apps,
        API keys and tokens survive. Session-bound calls then answer 403 "Authentication
        credentials were not provided." (§8 rule 2), exactly as for any unknown session."""
        with self._lock:
            self.sessions.clear()
            self.tasks.clear()
            self.files.clear()

    # ----------------------------------------------------------------- introspection
    def count_request(self, route: str) -> None:
        with self._lock:
            self._request_counts[route] += 1

    def request_counts(self) -> dict[str, int]:
        """Calls per route name (every name in ``ROUTE_NAMES``), WAF-blocked and failed ones
        included: what the client sent, not what OCS served."""
        with self._lock:
            return {route: self._request_counts[route] for route in ROUTE_NAMES}

    def waf_blocked(self) -> int:
        """Requests answered with the WAF's HTML 403 by the rate rule."""
        return self._waf_blocked

    @property
    def token_requests(self) -> int:
        return self._request_counts["token"]

    def request_count(self, route: str) -> int:
        return self._request_counts[route]

    def list_sessions(self) -> list[SimSession]:
        return list(self.sessions.values())

    def user_messages(self, session_id: str) -> list[str]:
        """Texts accepted by ``message/`` for this session, in arrival order."""
        return [r.text for r in self.sessions[session_id].received]

    def history(self, session_id: str) -> list[SimMessage]:
        session = self.sessions[session_id]
        self.advance(session)
        return list(session.messages)

    def uploaded_files(self, session_id: str | None = None) -> list[SimFile]:
        return [f for f in self.files.values()
                if f.purpose == "upload" and session_id in (None, f.session_id)]

    # ----------------------------------------------------------------- JSON shapes
    def file_json(self, file: SimFile) -> dict[str, Any]:
        """§5 File shape; content_url needs Bearer ``files:read`` (§0.10)."""
        return {"name": file.name, "content_type": file.content_type, "size": file.size,
                "content_url": f"{self.base_url}/api/files/{file.id}/content"}

    def message_json(self, message: SimMessage) -> dict[str, Any]:
        """§5 Message shape."""
        return {"created_at": format_timestamp(message.created_at), "role": message.role,
                "content": message.content, "metadata": dict(message.metadata),
                "tags": list(message.tags),
                "attachments": [self.file_json(self.files[i]) for i in message.file_ids]}
