"""Multi-workspace install through Bolt's OAuth flow, and forgetting a workspace that leaves.

``GET /slack/{channel}/install`` and ``GET /slack/{channel}/oauth_redirect`` are Bolt's
``AsyncOAuthFlow.handle_installation`` / ``handle_callback`` (docs/PLATFORMS.md §2.7): the install link
issues a one-time ``state`` (``RedisOAuthStateStore``, 10 minutes) and sets it in a cookie, then
redirects to Slack's authorize page; the callback checks the state against both (a stolen link
cannot install into someone else's session), exchanges the code with ``oauth.v2.access``, asks
``auth.test`` for the ``bot_id`` and saves bot and user tokens, incoming-webhook data and, for an
Enterprise Grid org-wide install, the organisation (``RedisInstallationStore``). Our parts are the
pages (``AsyncCallbackOptions``), the cookie's path and ``Secure`` flag, and the request/response
conversion: Bolt's Starlette adapter forces ``Secure`` cookies, which a plain-HTTP local gateway
never gets back. ``app_uninstalled`` and ``tokens_revoked`` delete through the store the way Bolt's
``AsyncTokenRevocationListeners`` do.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

import aiohttp
from slack_bolt.adapter.starlette.async_handler import to_async_bolt_request
from slack_bolt.oauth.async_callback_options import (
    AsyncCallbackOptions,
    AsyncFailureArgs,
    AsyncSuccessArgs,
)
from slack_bolt.oauth.async_oauth_flow import AsyncOAuthFlow
from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackClientError
from slack_sdk.oauth import AuthorizeUrlGenerator, OAuthStateUtils
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from adapters.slack.api import SlackApi
from adapters.slack.config import SlackChannelConfig
from adapters.slack.installation_store import RedisInstallationStore, RedisOAuthStateStore
from adapters.slack.manifest import bot_scopes

__all__ = ["InstallFailure", "OAuthInstaller", "STATE_COOKIE", "STATE_TTL_S", "authorize_url_base"]

log = logging.getLogger(__name__)

#: How long an install link stays valid between our redirect and Slack's.
STATE_TTL_S = 600
STATE_COOKIE = "ocsgw_slack_state"



class InstallFailure(StrEnum):
    """Why an install failed, as logged and shown: a fixed set. The callback's ``error``
    parameter is whatever the redirect carried (anyone can open the URL), so it is never
    logged or shown itself: Slack's documented value is named, any other is ``other``."""

    ACCESS_DENIED = "access_denied"  # Slack's: the admin pressed Cancel
    INVALID_STATE = "invalid_state"  # the rest are Bolt's own reasons
    INVALID_BROWSER = "invalid_browser"
    MISSING_CODE = "missing_code"
    INVALID_CODE = "invalid_code"
    STORAGE_ERROR = "storage_error"
    OTHER = "other"


#: The ``error`` values Slack documents for its redirect back to us (its OAuth guide).
_SLACK_ERRORS = frozenset({InstallFailure.ACCESS_DENIED})
#: Bolt's reasons when the redirect carried no ``error``.
_BOLT_REASONS = frozenset(InstallFailure) - _SLACK_ERRORS - {InstallFailure.OTHER}
#: Slack's codes are digits, dots and hex; anything else is refused before Bolt, which logs the
#: code it failed to exchange verbatim.
_CODE_SHAPE = re.compile(r"[A-Za-z0-9._-]{1,256}")

#: What the admin reads when the install fails.
_FAILURES: dict[InstallFailure, tuple[str, str]] = {
    InstallFailure.INVALID_STATE: ("Link expired", "This install link expired or was used already."),
    InstallFailure.INVALID_BROWSER: ("Wrong browser", "Finish the installation in the browser where you started it."),
    InstallFailure.MISSING_CODE: ("Link expired", "Slack sent no authorization code."),
    InstallFailure.INVALID_CODE: ("Installation refused", "Slack refused the installation (invalid_code)."),
    InstallFailure.STORAGE_ERROR: ("Installation not saved", "The installation could not be saved. Please try again."),
    InstallFailure.ACCESS_DENIED: ("Installation cancelled", "Nothing was installed. You can close this tab."),
    InstallFailure.OTHER: ("Installation failed", "Slack did not complete the installation."),
}


def _install_failure(reason: str, *, from_slack: bool) -> InstallFailure:
    """The fixed code for a failure Bolt reports: ``from_slack`` when the redirect carried an
    ``error`` (Bolt passes it on as the reason, unchecked)."""
    known = _SLACK_ERRORS if from_slack else _BOLT_REASONS
    return next((code for code in known if code.value == reason), InstallFailure.OTHER)


def authorize_url_base(api_base_url: str) -> str:
    """``https://slack.com/api`` → ``https://slack.com/oauth/v2/authorize`` (same host, so a fake
    Slack in tests serves both)."""
    root = api_base_url.rstrip("/").removesuffix("/api")
    return f"{root}/oauth/v2/authorize"


class _StateCookie(OAuthStateUtils):
    """Bolt's state cookie, scoped to this channel's routes and ``Secure`` only over HTTPS."""

    def __init__(self, *, path: str, secure: bool) -> None:
        super().__init__(cookie_name=STATE_COOKIE, expiration_seconds=STATE_TTL_S)
        self._attributes = f"HttpOnly; SameSite=Lax; Path={path}" + ("; Secure" if secure else "")

    def build_set_cookie_for_new_state(self, state: str) -> str:
        return f"{self.cookie_name}={state}; {self._attributes}; Max-Age={self.expiration_seconds}"

    def build_set_cookie_for_deletion(self) -> str:
        return f"{self.cookie_name}=deleted; {self._attributes}; Expires=Thu, 01 Jan 1970 00:00:00 GMT"


class _AuthorizeUrl(AuthorizeUrlGenerator):
    """Bolt's authorize URL with its query encoded: slack_sdk pastes ``redirect_uri`` and ``team``
    in raw, so a redirect URI's own ``?``/``&`` (or a ``team`` from the query) would bleed into
    Slack's parameters."""

    def generate(self, state: str, team: str | None = None) -> str:
        query = {
            "state": state,
            "client_id": self.client_id,
            "scope": ",".join(self.scopes or ()),
            "user_scope": ",".join(self.user_scopes or ()),
        }
        if self.redirect_uri is not None:
            query["redirect_uri"] = self.redirect_uri
        if team is not None:
            query["team"] = team
        return f"{self.authorization_url}?{urlencode(query)}"


class OAuthInstaller:
    """The install routes of one Slack channel and the clean-up when a workspace leaves."""

    def __init__(
        self,
        *,
        name: str,
        config: SlackChannelConfig,
        public_url: str | None,
        api: SlackApi,
        store: RedisInstallationStore,
        state_store: RedisOAuthStateStore,
    ) -> None:
        self._name = name
        self._config = config
        self._public_url = public_url
        self._api = api
        self.store = store
        self._state_store = state_store
        self._flow: AsyncOAuthFlow | None = None

    @property
    def enabled(self) -> bool:
        return self._config.client_id is not None and self._config.client_secret is not None

    def routes(self) -> list[BaseRoute]:
        if not self.enabled:
            return []
        return [
            Route(f"/slack/{self._name}/install", self.install, methods=["GET"]),
            Route(f"/slack/{self._name}/oauth_redirect", self.oauth_redirect, methods=["GET"]),
        ]

    def flow(self, request: Request) -> AsyncOAuthFlow:
        """Bolt's flow. With ``public_url`` the redirect URI is fixed and one flow serves every
        request; without, it follows the host the admin used (a local gateway), so the flow, a
        few plain objects, is built for the request."""
        if self._public_url is not None:
            if self._flow is None:
                self._flow = self._build(self._public_url)
            return self._flow
        return self._build(str(request.base_url).rstrip("/"))

    def _build(self, base_url: str) -> AsyncOAuthFlow:
        assert self._config.client_id is not None and self._config.client_secret is not None
        redirect_uri = f"{base_url}/slack/{self._name}/oauth_redirect"
        settings = AsyncOAuthSettings(
            client_id=self._config.client_id,
            client_secret=self._config.client_secret.reveal(),
            scopes=list(bot_scopes(self._config)),
            user_scopes=list(self._config.user_scopes),
            redirect_uri=redirect_uri,
            install_path=f"/slack/{self._name}/install",
            # Straight to Slack: the "Add to Slack" page would only add a click.
            install_page_rendering_enabled=False,
            redirect_uri_path=f"/slack/{self._name}/oauth_redirect",
            callback_options=AsyncCallbackOptions(success=self._success, failure=self._failure),
            authorization_url=authorize_url_base(self._config.api_base_url),
            installation_store=self.store,
            token_rotation_expiration_minutes=self._config.token_rotation_expiration_minutes,
            state_store=self._state_store,
            state_cookie_name=STATE_COOKIE,
            state_expiration_seconds=STATE_TTL_S,
            logger=log,
        )
        settings.state_utils = _StateCookie(path=f"/slack/{self._name}/", secure=redirect_uri.startswith("https://"))
        settings.authorize_url_generator = _AuthorizeUrl(
            client_id=settings.client_id, redirect_uri=redirect_uri, scopes=settings.scopes,
            user_scopes=settings.user_scopes, authorization_url=settings.authorization_url,
        )  # fmt: skip
        return AsyncOAuthFlow(client=self._api.client(), logger=log, settings=settings)

    async def install(self, request: Request) -> Response:
        flow = self.flow(request)
        return _starlette(await flow.handle_installation(to_async_bolt_request(request, b"")))

    async def oauth_redirect(self, request: Request) -> Response:
        code = request.query_params.get("code")
        if "error" not in request.query_params and code is not None and not _CODE_SHAPE.fullmatch(code):
            log.warning("slack channel %s: install failed: %s", self._name, InstallFailure.INVALID_CODE)
            return _starlette(self._failure_page(InstallFailure.INVALID_CODE, 401))
        flow = self.flow(request)
        try:
            answer = await flow.handle_callback(to_async_bolt_request(request, b""))
        except (TimeoutError, aiohttp.ClientError, SlackClientError, OSError) as exc:
            # Bolt lets network failures of oauth.v2.access / auth.test through.
            log.warning("slack channel %s: Slack unreachable during install: %s", self._name, type(exc).__name__)
            return _starlette(_page("Slack is unavailable", "Slack did not answer. Please start the installation again.", 503))
        return _starlette(answer)

    async def _success(self, args: AsyncSuccessArgs) -> BoltResponse:
        installation = args.installation
        where = installation.team_name or installation.enterprise_name or installation.team_id or installation.enterprise_id
        log.info(
            "slack channel %s: installed in %s %s", self._name,
            "organisation" if installation.is_enterprise_install else "team",
            installation.enterprise_id if installation.is_enterprise_install else installation.team_id,
        )  # fmt: skip
        body = (
            f"The bot is installed in <b>{html.escape(where or 'your workspace')}</b>. "
            "Send it a direct message, or mention it in a channel it was invited to."
        )
        deletion = args.settings.state_utils.build_set_cookie_for_deletion()
        return _page("Installed", body, 200, set_cookie=deletion)

    async def _failure(self, args: AsyncFailureArgs) -> BoltResponse:
        failure = _install_failure(args.reason, from_slack="error" in args.request.query)
        if failure is InstallFailure.ACCESS_DENIED:
            log.info("slack channel %s: install cancelled", self._name)
        else:
            log.warning("slack channel %s: install failed: %s", self._name, failure)
        return self._failure_page(failure, args.suggested_status_code)

    def _failure_page(self, failure: InstallFailure, status: int) -> BoltResponse:
        title, text = _FAILURES[failure]
        again = f'/slack/{html.escape(self._name)}/install'
        body = f'{html.escape(text)} <a href="{again}">Start again</a>.'
        return _page(title, body, status)

    async def forget(self, team: str, enterprise: str, org_wide: bool, event: Mapping[str, Any]) -> None:
        """Delete on ``app_uninstalled`` (everything) or ``tokens_revoked`` (the revoked user
        tokens' installations; the bot when its token is revoked), as Bolt does. Idempotent, so
        Slack's retries of the same event are harmless."""
        ids: dict[str, str | None] = {"enterprise_id": enterprise or None, "team_id": None if org_wide else team}
        if event.get("type") == "app_uninstalled":
            await self.store.async_delete_all(**ids)
        else:
            given = event.get("tokens")
            tokens: Mapping[str, Any] = given if isinstance(given, dict) else {}
            oauth = tokens.get("oauth")
            users: list[Any] = oauth if isinstance(oauth, list) else []
            for user_id in users:
                if isinstance(user_id, str):
                    await self.store.async_delete_installation(**ids, user_id=user_id)
            if tokens.get("bot"):
                await self.store.async_delete_bot(**ids)
        log.info("slack channel %s: %s for %s", self._name, event.get("type"), enterprise if org_wide else team)


def _page(title: str, body_html: str, status: int, *, set_cookie: str | None = None) -> BoltResponse:
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>"
        f"<body style='font-family:sans-serif;max-width:40em;margin:4em auto'><h1>{html.escape(title)}</h1>"
        f"<p>{body_html}</p></body></html>"
    )
    headers: dict[str, str | Sequence[str]] = {"Content-Type": "text/html; charset=utf-8"}
    if set_cookie is not None:
        headers["Set-Cookie"] = [set_cookie]
    return BoltResponse(status=status, body=page, headers=headers)


def _starlette(answer: BoltResponse) -> Response:
    """Bolt's response as it is, cookies included (Bolt's Starlette adapter rewrites them)."""
    response = Response(content=answer.body, status_code=answer.status)
    for name, values in answer.headers.items():
        if name.lower() == "content-length":
            continue
        for value in values:
            response.raw_headers.append((name.lower().encode("latin-1"), str(value).encode("latin-1")))
    return response
