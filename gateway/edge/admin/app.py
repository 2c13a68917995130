"""The ``/admin`` console: a few server-rendered pages over the operator's summary and the
dead-letter store, mounted on the web process only when ``admin_token`` is configured.

Pages: the overview (channels, workers, turns in flight, reply delay, OCS budget, dead letters),
the dead-letter list, one letter (its content, which the operator asked to see), and the replay
and drop actions (POST forms, CSRF-checked; ``auth.py``). Next to each Replay button the page
says what the replay will do: ask OCS again (and whether the ledger shows OCS already had the
message) or re-deliver the stored answer. Wrong tokens are throttled per client address. ``/admin/api/summary`` gives the
overview as JSON to bearer-token callers. No JavaScript: a meta refresh keeps the overview fresh.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from gateway.core.config import GatewayConfig
from gateway.core.logs import conversation_label
from gateway.core.models import Inbound
from gateway.edge.admin.auth import AdminAuth, FailureThrottle, Session, client_address
from gateway.edge.admin.summary import Summary, gather_summary
from gateway.edge.admin.text import ago, clock, duration
from gateway.edge.admin.wake import wake_conversation
from gateway.services import Services
from gateway.store.dead_letters import DeadLetter, DeadLetterStage
from gateway.store.ledger import TurnState

__all__ = ["create_admin_app", "summary_json"]

log = logging.getLogger("ocsgw.admin")

_LETTER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Seconds between refreshes of the overview.
REFRESH_S = 30
_PAGE = 50
#: Security headers on every console answer: no framing, no scripts, nothing cached.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Handler = Callable[[Request, Session], Awaitable[Response]]


def create_admin_app(
    config: GatewayConfig, services: Callable[[], Services], *, throttle: FailureThrottle | None = None
) -> Starlette:
    """The console's ASGI app; ``services`` gives the web process's ``Services`` once they are
    open (the console is mounted before the lifespan opens them). ``throttle``: how many wrong
    tokens an address may offer per window (default 5 per 5 minutes)."""
    if config.admin_token is None:
        raise ValueError("the console needs admin_token")
    auth = AdminAuth(config.admin_token.reveal(), public_url=config.public_url)
    console = _Console(auth, throttle or FailureThrottle(), services)
    return Starlette(routes=console.routes())


class _Console:
    def __init__(self, auth: AdminAuth, throttle: FailureThrottle, services: Callable[[], Services]) -> None:
        self.auth = auth
        self.throttle = throttle
        self.services = services
        self.templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
        env = self.templates.env
        env.filters.update(duration=duration, ago=ago, clock=clock, replay_plan=_replay_plan)

    def routes(self) -> list[Route]:
        return [
            Route("/", self._guard(self.overview), methods=["GET"]),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self._guard(self.logout, form=True), methods=["POST"]),
            Route("/api/summary", self._guard(self.api_summary), methods=["GET"]),
            Route("/dead-letters", self._guard(self.letters), methods=["GET"]),
            Route("/dead-letters/{letter_id}", self._guard(self.letter), methods=["GET"]),
            Route("/dead-letters/{letter_id}/replay", self._guard(self.replay, form=True), methods=["POST"]),
            Route("/dead-letters/{letter_id}/drop", self._guard(self.drop, form=True), methods=["POST"]),
        ]

    # -- the guard ----------------------------------------------------------------------------

    def _guard(self, handler: Handler, *, form: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """Authenticate; for POST forms made with the cookie, also check the CSRF token and
        that the browser says the form came from this console; offered tokens are throttled."""

        async def guarded(request: Request) -> Response:
            if self.auth.bearer(request) is not None:  # a token to check: a guess, maybe
                try:
                    session = await self._checked_bearer(request)
                except RedisError as exc:
                    return _finish(self._redis_down(request, exc))
                except _Throttled as exc:
                    return _finish(self._throttled(request, exc.retry_after_s))
            else:
                session = self.auth.session(request)
            if session is None:
                return _finish(self._unauthenticated(request))
            if form and session.csrf is not None:
                submitted = await request.form()
                token = submitted.get("csrf")
                if not self.auth.same_origin(request) or not self.auth.csrf_matches(
                    session, token if isinstance(token, str) else None
                ):
                    log.warning("admin: refused a cross-site or forged form post to %s", request.url.path)
                    return _finish(self._error(request, 403, "This form did not come from the console. Reload the page and try again."))
            try:
                return _finish(await handler(request, session))
            except RedisError as exc:
                return _finish(self._redis_down(request, exc))

        return guarded

    async def _checked_bearer(self, request: Request) -> Session | None:
        """The bearer token's session, counting a wrong one against the client's address.

        Raises:
            _Throttled: the address offered too many wrong tokens lately (even a right one now
                waits: a guesser must not learn which of its tries was right).
        """
        await self._refuse_if_throttled(request)
        session = self.auth.session(request)
        if session is None:
            await self._count_failure(request)
        return session

    async def _refuse_if_throttled(self, request: Request) -> None:
        services = self.services()
        wait_s = await self.throttle.retry_after(services.redis, services.keys, client_address(request))
        if wait_s:
            raise _Throttled(wait_s)

    async def _count_failure(self, request: Request) -> None:
        services = self.services()
        address = client_address(request)
        failures = await self.throttle.failed(services.redis, services.keys, address)
        log.warning("admin: wrong token from %s (%d in this window)", address, failures)
        if failures == self.throttle.max_failures:
            log.warning("admin: refusing tokens from %s for %.0f s after %d wrong ones",
                        address, self.throttle.window_s, failures)

    def _throttled(self, request: Request, retry_after_s: int) -> Response:
        minutes = max(1, round(retry_after_s / 60))
        message = f"Too many wrong tokens from your address. Try again in about {minutes} minute(s)."
        response = self._error(request, 429, message)
        response.headers["Retry-After"] = str(retry_after_s)
        return response

    def _redis_down(self, request: Request, exc: RedisError) -> Response:
        log.warning("admin: Redis unavailable: %s", exc)
        return self._error(request, 503, "Redis is unreachable; the console cannot read the gateway's state.")

    def _unauthenticated(self, request: Request) -> Response:
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(_base(request) + "/login", status_code=303)
        return JSONResponse(
            {"error": "authentication required"}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="ocs-gateway admin"'}
        )

    def _error(self, request: Request, status: int, message: str) -> Response:
        if "text/html" in request.headers.get("accept", "") or request.method == "POST":
            return self._page(request, "error.html", {"status": status, "message": message}, None, status=status)
        return JSONResponse({"error": message}, status_code=status)

    def _page(
        self, request: Request, name: str, context: dict[str, Any], session: Session | None, *, status: int = 200
    ) -> Response:
        context = {"base": _base(request), "csrf": session.csrf if session else None, **context}
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    # -- login --------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return _finish(self._page(request, "login.html", {"failed": False}, None))
        if not self.auth.same_origin(request):
            return _finish(self._error(request, 403, "Log in from the console's own page."))
        try:
            await self._refuse_if_throttled(request)
            token = (await request.form()).get("token")
            if not isinstance(token, str) or not self.auth.token_matches(token):
                await self._count_failure(request)
                return _finish(self._page(request, "login.html", {"failed": True}, None, status=401))
        except _Throttled as exc:
            return _finish(self._throttled(request, exc.retry_after_s))
        except RedisError as exc:
            return _finish(self._redis_down(request, exc))
        response = RedirectResponse(_base(request) + "/", status_code=303)
        self.auth.login(request, response)
        return _finish(response)

    async def logout(self, request: Request, session: Session) -> Response:
        response = RedirectResponse(_base(request) + "/login", status_code=303)
        self.auth.logout(request, response)
        return response

    # -- pages --------------------------------------------------------------------------------

    async def overview(self, request: Request, session: Session) -> Response:
        summary = await gather_summary(self.services())
        return self._page(request, "overview.html", {"s": summary, "refresh_s": REFRESH_S}, session)

    async def api_summary(self, request: Request, session: Session) -> Response:
        return JSONResponse(summary_json(await gather_summary(self.services())))

    async def letters(self, request: Request, session: Session) -> Response:
        store = self.services().dead_letters
        channel = request.query_params.get("channel") or None
        try:
            page = await store.list(limit=_PAGE, cursor=request.query_params.get("cursor") or None, channel=channel)
        except ValueError:
            return self._error(request, 400, "That page link is not valid any more; start from the first page.")
        total = int(await self.services().redis.zcard(self.services().keys.dlq))
        context = {"letters": list(page), "next_cursor": page.next_cursor, "channel": channel, "total": total,
                   "done": request.query_params.get("done", "")}
        return self._page(request, "letters.html", context, session)

    async def letter(self, request: Request, session: Session) -> Response:
        letter_id = request.path_params["letter_id"]
        found = await self.services().dead_letters.get(letter_id) if _LETTER_ID.match(letter_id) else None
        if found is None:
            return self._error(request, 404, f"No dead letter {letter_id!r} (replayed, dropped or expired).")
        try:
            inbound = json.dumps(json.loads(found.inbound), indent=2, ensure_ascii=False)
        except ValueError:
            inbound = found.inbound  # an unreadable item: show it as it was parked
        context = {"letter": found, "inbound": inbound, "ledger": json.dumps(found.ledger, indent=2, ensure_ascii=False)}
        return self._page(request, "letter.html", context, session)

    async def replay(self, request: Request, session: Session) -> Response:
        letter_id = request.path_params["letter_id"]
        services = self.services()
        if not _LETTER_ID.match(letter_id):
            return self._error(request, 404, "No such dead letter.")
        try:
            conv = await services.dead_letters.replay(letter_id)
        except ValueError as exc:
            return self._error(request, 409, str(exc))
        if conv is None:
            return self._error(request, 404, f"No dead letter {letter_id!r} (replayed, dropped or expired).")
        await wake_conversation(services.redis, str(conv))
        label = conversation_label(conv, reveal=services.config.log_message_text)
        log.info("admin: replayed dead letter %s into %s", letter_id, label)
        return self._done(request, session, f"replayed {letter_id}")

    async def drop(self, request: Request, session: Session) -> Response:
        letter_id = request.path_params["letter_id"]
        dropped = _LETTER_ID.match(letter_id) is not None and await self.services().dead_letters.drop(letter_id)
        if not dropped:
            return self._error(request, 404, f"No dead letter {letter_id!r} (replayed, dropped or expired).")
        log.info("admin: dropped dead letter %s", letter_id)
        return self._done(request, session, f"dropped {letter_id}")

    def _done(self, request: Request, session: Session, what: str) -> Response:
        if session.csrf is None:  # a bearer call: answer the script, not a browser
            return JSONResponse({"ok": True, "done": what})
        return RedirectResponse(f"{_base(request)}/dead-letters?done={what.replace(' ', '+')}", status_code=303)


class _Throttled(Exception):
    """The client's address is refused for ``retry_after_s`` more seconds."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(retry_after_s)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class _ReplayPlan:
    """What pressing Replay on a letter does, in the operator's words: ``short`` for the list,
    ``detail`` next to the letter's button; ``asks_ocs`` the replay sends the message to OCS."""

    short: str
    detail: str
    asks_ocs: bool
    possible: bool = True


#: Ledger states after which OCS holds the message (the failure policy parks with the turn's state).
_OCS_HAD_IT = {str(TurnState.SENT), str(TurnState.DELIVERING)}


def _replay_plan(letter: DeadLetter) -> _ReplayPlan:
    """Mirrors ``DeadLetterStore.replay``: a delivery failure with its answer re-delivers that
    answer; every other letter puts the original message back, which starts a new turn."""
    if letter.stage is DeadLetterStage.DELIVERY and letter.reply is not None:
        return _ReplayPlan("re-delivers the stored answer",
                           "Replay re-delivers the answer stored with this letter; OCS is not asked again.", False)
    try:
        Inbound.from_json(letter.inbound)
    except (ValueError, KeyError, TypeError):
        return _ReplayPlan("not possible (no readable message)", "This letter holds no readable message: replay is refused; drop it.",
                           False, possible=False)
    ask = "Replay sends the message to OCS again, as a new message in the conversation."
    state = str(letter.ledger.get("state") or "")
    if state in _OCS_HAD_IT or letter.ocs.get("task_id"):
        return _ReplayPlan("asks OCS again; OCS already had it",
                           f"{ask} The ledger shows OCS had already received it (state {state or 'sent'}), "
                           "so OCS will see it twice.", True)
    if state == "sending":
        return _ReplayPlan("asks OCS again; OCS may have it",
                           f"{ask} The ledger shows the send was under way when it failed: OCS may already "
                           "have received it.", True)
    if state == "received":
        return _ReplayPlan("asks OCS again", f"{ask} The ledger shows it never reached OCS.", True)
    return _ReplayPlan("asks OCS again",
                       f"{ask} The letter does not record whether OCS had already received it.", True)


def summary_json(summary: Summary) -> dict[str, Any]:
    """The overview as JSON (the same facts as the page; no message text)."""
    return {
        "generated_at": summary.generated_at,
        "problems": summary.problems(),
        "channels": [
            {"name": c.name, "kind": c.kind, "path": c.path, "bot": c.bot, "traffic_5m": c.traffic.last_5m,
             "traffic_60m": c.traffic.last_60m, "platform": dict(c.platform)}
            for c in summary.channels
        ],
        "workers": [
            {"worker_id": w.worker_id, "host": w.host, "pid": w.pid, "alive": w.is_alive(summary.generated_at),
             "state": w.state(summary.generated_at),
             "beat_age_s": w.age_s(summary.generated_at), "conversations": w.conversations, "version": w.version}
            for w in summary.workers
        ],
        "turns_total": summary.turns_total,
        "turns": [
            {"conversation": t.conversation, "state": t.state, "age_s": t.age_s, "attempts": t.attempts,
             "owned": t.owned, "overdue_s": t.overdue_s, "stuck": t.stuck, "last_error": t.last_error}
            for t in summary.turns
        ],
        "reply_delay": [
            {"window_minutes": d.window_minutes, "count": d.count, "p50_s": d.p50_s, "p95_s": d.p95_s}
            for d in summary.delays
        ],
        "user_wait": [
            {"window_minutes": w.window_minutes, "count": w.count, "p50_s": w.p50_s, "p95_s": w.p95_s}
            for w in summary.waits
        ],
        "budget": [
            {"scope": b.scope, "name": b.name, "used": b.used, "limit": b.limit, "resets_in_s": b.resets_in_s,
             "blocked_for_s": b.blocked_for_s, "reason": b.reason, "bots": summary.budget_bots.get(b.name, [])}
            for b in summary.budget
        ],
        "budget_sessions": summary.budget_sessions,
        "dead_letters_total": summary.dead_letters_total,
        "dead_letters": [
            {"id": d.id, "conversation": d.conversation, "stage": d.stage, "parked_at": d.parked_at, "error": d.error}
            for d in summary.dead_letters
        ],
    }


def _base(request: Request) -> str:
    return str(request.scope.get("root_path") or "").rstrip("/")


def _finish(response: Response) -> Response:
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    return response

