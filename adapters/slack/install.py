"""Multi-workspace install: Slack's OAuth v2 flow, and forgetting a workspace that leaves.

``GET /slack/{channel}/install`` stores a one-time ``state`` in Redis (10 minutes) and in a
cookie, then redirects to Slack's authorize page. Slack sends the admin back to
``GET /slack/{channel}/oauth_redirect?code&state``; we check the state against both (a stolen
link cannot install into someone else's session, the CSRF defence Bolt uses), exchange the code
with ``oauth.v2.access``, ask ``auth.test`` for the ``bot_id`` it does not return, and store one
installation per workspace (PROTOCOLS.md §2.7). ``app_uninstalled`` and ``tokens_revoked`` delete it.
"""

from __future__ import annotations

import base64
import html
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import redis.asyncio as aioredis
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from adapters.slack.api import SlackApi, slack_errors
from adapters.slack.manifest import bot_scopes
from adapters.slack.workspaces import Installation, Workspaces
from gateway.core.config import SlackChannelConfig
from gateway.core.errors import DeliveryError, DeliveryRejected, RetryLater
from gateway.core.keys import Keys

__all__ = ["OAuthInstaller", "STATE_TTL_S", "authorize_url_base"]

log = logging.getLogger(__name__)

#: How long an install link stays valid between our redirect and Slack's.
STATE_TTL_S = 600
_COOKIE = "ocsgw_slack_state"


def authorize_url_base(api_base_url: str) -> str:
    """``https://slack.com/api`` → ``https://slack.com/oauth/v2/authorize`` (same host, so a fake
    Slack in tests serves both)."""
    root = api_base_url.rstrip("/").removesuffix("/api")
    return f"{root}/oauth/v2/authorize"


class OAuthInstaller:
    """The install routes of one Slack channel and the clean-up when a workspace leaves."""

    def __init__(
        self,
        *,
        name: str,
        config: SlackChannelConfig,
        public_url: str | None,
        api: SlackApi,
        workspaces: Workspaces,
        redis: aioredis.Redis,
        keys: Keys,
    ) -> None:
        self._name = name
        self._config = config
        self._public_url = public_url
        self._api = api
        self._workspaces = workspaces
        self._redis = redis
        self._keys = keys

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

    def _redirect_uri(self, request: Request) -> str:
        base = self._public_url or str(request.base_url).rstrip("/")
        return f"{base}/slack/{self._name}/oauth_redirect"

    async def install(self, request: Request) -> Response:
        state = secrets.token_urlsafe(32)
        await self._redis.set(self._keys.slack_oauth_state(state), self._name, ex=STATE_TTL_S)
        redirect_uri = self._redirect_uri(request)
        query = urlencode(
            {
                "client_id": self._config.client_id,
                "scope": ",".join(bot_scopes(self._config)),
                "state": state,
                "redirect_uri": redirect_uri,
            }
        )
        response = RedirectResponse(f"{authorize_url_base(self._config.api_base_url)}?{query}", status_code=302)
        response.set_cookie(
            _COOKIE, state, max_age=STATE_TTL_S, path=f"/slack/{self._name}/",
            httponly=True, samesite="lax", secure=redirect_uri.startswith("https://"),
        )  # fmt: skip
        return response

    async def oauth_redirect(self, request: Request) -> Response:
        params = request.query_params
        state = params.get("state", "")
        stored = await self._redis.getdel(self._keys.slack_oauth_state(state)) if state else None
        if params.get("error"):
            return _page("Installation cancelled", "Nothing was installed. You can close this tab.", 200)
        if not params.get("code") or stored is None or _text(stored) != self._name:
            again = f"/slack/{html.escape(self._name)}/install"
            body = f'This install link expired or was used already. <a href="{again}">Start again</a>.'
            return _page("Link expired", body, 400)
        if request.cookies.get(_COOKIE) != state:
            return _page("Wrong browser", "Finish the installation in the browser where you started it.", 400)
        try:
            installation = await self._exchange(params["code"], self._redirect_uri(request))
        except RetryLater:
            return _page("Slack is unavailable", "Slack did not answer. Please start the installation again.", 503)
        except DeliveryError as exc:
            log.warning("slack channel %s: install refused: %s", self._name, exc)
            return _page("Installation refused", f"Slack refused the installation ({html.escape(str(exc))}).", 400)
        await self._workspaces.store.save(installation)
        log.info("slack channel %s: installed in team %s", self._name, installation.team_id)
        response = _page(
            "Installed",
            f"The bot is installed in <b>{html.escape(installation.team_name or installation.team_id)}</b>. "
            "Send it a direct message, or mention it in a channel it was invited to.",
            200,
        )
        response.delete_cookie(_COOKIE, path=f"/slack/{self._name}/")
        return response

    async def _exchange(self, code: str, redirect_uri: str) -> Installation:
        assert self._config.client_id is not None and self._config.client_secret is not None
        # Client credentials go as HTTP Basic, as Slack prefers; we build the header ourselves
        # because slack_sdk's oauth_v2_access uses aiohttp.BasicAuth, deprecated in aiohttp 3.14.
        credentials = f"{self._config.client_id}:{self._config.client_secret.reveal()}".encode()
        basic = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
        with slack_errors("oauth.v2.access"):
            granted = await self._api.client().api_call(
                "oauth.v2.access", data={"code": code, "redirect_uri": redirect_uri}, headers=basic
            )
        token = str(granted.get("access_token") or "")
        if granted.get("token_type") != "bot" or not token:
            raise DeliveryRejected("oauth.v2.access returned no bot token")
        team: Mapping[str, Any] = granted.get("team") or {}
        enterprise: Mapping[str, Any] = granted.get("enterprise") or {}
        # oauth.v2.access has no bot_id; auth.test with the new token does (§2.7).
        identity = await self._workspaces.auth_test(token)
        return Installation(
            team_id=str(team.get("id") or enterprise.get("id") or identity.team_id),
            bot_token=token,
            bot_user_id=str(granted.get("bot_user_id") or identity.user_id),
            bot_id=identity.bot_id,
            enterprise_id=str(enterprise.get("id") or ""),
            team_name=str(team.get("name") or enterprise.get("name") or ""),
            app_id=str(granted.get("app_id") or ""),
            scope=str(granted.get("scope") or ""),
            installed_at=time.time(),
        )

    async def forget(self, team: str, enterprise: str, event: Mapping[str, Any]) -> None:
        """Delete a workspace's installation on ``app_uninstalled`` or revoked bot tokens.

        ``tokens_revoked`` lists user ids per token kind; only ``bot`` matters, we keep no user
        tokens (Bolt's TokenRevocationListeners does the same split).
        """
        if event.get("type") == "tokens_revoked":
            tokens = event.get("tokens") or {}
            if not (isinstance(tokens, dict) and tokens.get("bot")):
                return
        deleted = await self._workspaces.store.delete(team)
        if not deleted and enterprise:
            deleted = await self._workspaces.store.delete(enterprise)  # an org-wide installation
        log.info("slack channel %s: %s for team %s (installation deleted: %s)", self._name, event.get("type"), team, deleted)


def _page(title: str, body_html: str, status: int) -> HTMLResponse:
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>"
        f"<body style='font-family:sans-serif;max-width:40em;margin:4em auto'><h1>{html.escape(title)}</h1>"
        f"<p>{body_html}</p></body></html>"
    )
    return HTMLResponse(page, status_code=status)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
