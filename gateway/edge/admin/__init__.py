"""The operator console at ``/admin`` and the summary it shares with ``ocs-gateway status``."""

from __future__ import annotations

from gateway.edge.admin.app import create_admin_app

__all__ = ["create_admin_app"]
