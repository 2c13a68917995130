"""Who the gateway says it is on every outbound request (OCS's WAF may refuse requests without a
User-Agent, docs/OCS.md §3.2)."""

from __future__ import annotations

__all__ = ["USER_AGENT", "VERSION"]

VERSION = "0.1.0"
USER_AGENT = f"ocs-gateway/{VERSION} (+https://github.com/ocs-gateway/ocs-gateway)"
