"""Simulator-only HTTP routes under ``/_simulator/``: drive and read a simulator that runs in
another process (``ocs-gateway sim``, as the benchmarks start it) the way a test drives an
in-process ``SimulatorState``. Not part of OCS: these are not counted, rate-limited or WAF-checked.

- ``GET  /_simulator/stats`` -> ``{"request_counts": {route: n}, "waf_blocked": n}``
- ``GET  /_simulator/tasks`` -> ``{"completed_at": {task_id: epoch seconds | null}}``
- ``POST /_simulator/knobs`` ``{"rtt_s": 0.05, "reply_latency": {"kind": "lognormal", "median_s": 3,
  "p95_s": 12}, ...}`` -> the knobs after the change (400 on an unknown knob or a wrong type)
- ``POST /_simulator/drop_after_accept`` ``{"route": "message", "count": 1}``
- ``POST /_simulator/drop_before_accept`` ``{"route": "message", "count": 1}``
- ``POST /_simulator/complete_session`` ``{"session_id": "..."}`` (404 for an unknown session)
- ``POST /_simulator/forget_sessions``
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.ocs.simulator.latency import LatencyModel
from gateway.ocs.simulator.state import SimulatorKnobs, SimulatorState

__all__ = ["control_routes", "knobs_json"]

_JSON_KINDS: dict[str, tuple[type, ...]] = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}


def knobs_json(knobs: SimulatorKnobs) -> dict[str, Any]:
    return dataclasses.asdict(knobs)


def _coerce(annotation: str, value: Any) -> Any:
    """``value`` from JSON as the knob's declared type (``float``, ``int | None``, ...)."""
    base, _, rest = annotation.partition(" | ")
    if value is None and rest == "None":
        return None
    if base == "LatencyModel":
        if not isinstance(value, dict):
            raise ValueError("reply_latency is null or {kind, median_s, p95_s}")
        kind, median = value.get("kind"), float(value["median_s"])
        if kind == "fixed":
            return LatencyModel.fixed(median)
        if kind == "lognormal":
            return LatencyModel.lognormal(median, float(value["p95_s"]))
        raise ValueError("reply_latency kind is fixed or lognormal")
    if base == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
        return tuple(value)
    kinds = _JSON_KINDS[base]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValueError(f"expected {annotation}, got {value!r}")
    if base == "float":
        number = float(value)  # type: ignore[arg-type]  # an int or float: checked just above
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")  # json reads 1e999 as inf
        return number
    return value


def control_routes(state: SimulatorState) -> list[Route]:
    async def stats(request: Request) -> Response:
        return JSONResponse({"request_counts": state.request_counts(), "waf_blocked": state.waf_blocked()})

    async def tasks(request: Request) -> Response:
        return JSONResponse({"completed_at": state.completed_tasks()})

    async def knobs(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("a JSON object of knob names to values")
            declared = {f.name: str(f.type) for f in dataclasses.fields(SimulatorKnobs)}
            unknown = sorted(set(body) - set(declared))
            if unknown:
                raise ValueError(f"unknown knobs {unknown}")
            changes = {name: _coerce(declared[name], value) for name, value in body.items()}
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        for name, value in changes.items():  # all or nothing: every value was checked first
            setattr(state.knobs, name, value)
        return JSONResponse(knobs_json(state.knobs))

    async def drop_after_accept(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            state.drop_after_accept(str(body.get("route", "message")), int(body.get("count", 1)))
        except (ValueError, TypeError, AttributeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({})

    async def drop_before_accept(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            state.drop_before_accept(str(body.get("route", "message")), int(body.get("count", 1)))
        except (ValueError, TypeError, AttributeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({})

    async def complete_session(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            session_id = str(body["session_id"])
        except (ValueError, TypeError, KeyError) as exc:
            return JSONResponse({"error": f"a JSON object with session_id: {exc}"}, status_code=400)
        if session_id not in state.sessions:
            return JSONResponse({"error": f"no session {session_id}"}, status_code=404)
        state.complete_session(session_id)
        return JSONResponse({})

    async def forget_sessions(request: Request) -> Response:
        state.forget_sessions()
        return JSONResponse({})

    return [
        Route("/_simulator/stats", stats, methods=["GET"]),
        Route("/_simulator/tasks", tasks, methods=["GET"]),
        Route("/_simulator/knobs", knobs, methods=["POST"]),
        Route("/_simulator/drop_after_accept", drop_after_accept, methods=["POST"]),
        Route("/_simulator/drop_before_accept", drop_before_accept, methods=["POST"]),
        Route("/_simulator/complete_session", complete_session, methods=["POST"]),
        Route("/_simulator/forget_sessions", forget_sessions, methods=["POST"]),
    ]
