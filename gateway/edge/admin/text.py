"""The summary as plain text (``ocs-gateway status``) and the small formatters the console's
templates share with it."""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.edge.admin.summary import Summary
from gateway.store.heartbeats import Heartbeat

__all__ = ["ago", "clock", "duration", "format_summary"]


def duration(seconds: float | None) -> str:
    """``850 ms``, ``4.2 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs and minutes < 10 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def ago(timestamp: float | None, now: float | None = None) -> str:
    if not timestamp:
        return "never"
    return f"{duration(max(0.0, (time.time() if now is None else now) - timestamp))} ago"


def _worker_state(worker: Heartbeat, now: float) -> str:
    state = worker.state(now)
    if state == "stale":
        return f"STALE (swept {ago(worker.housekeeping_at or worker.started_at, now)})"
    return "alive" if state == "alive" else "DEAD"


def clock(timestamp: float | None) -> str:
    """A UTC time the way logs print it."""
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp)) + "Z"


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def format_summary(summary: Summary) -> str:
    now = summary.generated_at
    lines = [f"ocs-gateway status at {clock(now)}"]
    problems = summary.problems()
    lines.append("problems: none" if not problems else "problems:")
    lines.extend(f"  ! {problem}" for problem in problems)

    lines.append("")
    lines.append(f"channels ({len(summary.channels)})")
    if summary.channels:
        rows: list[tuple[str, ...]] = [("name", "kind", "path", "bot", "5 min ok/4xx/5xx", "60 min ok/4xx/5xx", "platform")]
        for c in summary.channels:
            t5, t60 = c.traffic.last_5m, c.traffic.last_60m
            platform = "; ".join(c.warnings) or str(c.platform.get("summary") or "-")
            rows.append((c.name, c.kind, c.path, c.bot, f"{t5['ok']}/{t5['4xx']}/{t5['5xx']}",
                         f"{t60['ok']}/{t60['4xx']}/{t60['5xx']}", platform))
        lines.extend(_table(rows))

    lines.append("")
    lines.append(f"workers ({len(summary.workers_alive)} alive of {len(summary.workers)})")
    if summary.workers:
        rows = [("worker", "host", "pid", "state", "last beat", "conversations")]
        for worker in summary.workers:
            rows.append((worker.worker_id, worker.host, str(worker.pid), _worker_state(worker, now),
                         ago(worker.beat_at, now), str(worker.conversations)))
        lines.extend(_table(rows))

    lines.append("")
    shown = f", oldest {len(summary.turns)} shown" if summary.turns_total > len(summary.turns) else ""
    lines.append(f"turns in flight ({summary.turns_total}{shown}, {len(summary.stuck)} stuck)")
    if summary.turns:
        rows = [("conversation", "state", "age", "attempts", "owner", "")]
        for t in summary.turns:
            rows.append((t.conversation, t.state, duration(t.age_s), str(t.attempts),
                         "held" if t.owned else f"none, {duration(t.overdue_s)} overdue" if t.overdue_s else "none",
                         "STUCK" if t.stuck else ""))
        lines.extend(_table(rows))

    lines.append("")
    lines.append("reply delay (OCS done → first part out) and user wait (message in → first part out), all workers")
    for delay, wait in zip(summary.delays, summary.waits):
        lines.append(
            f"  last {delay.window_minutes:>2} min: delay p50 {duration(delay.p50_s)}, p95 {duration(delay.p95_s)};"
            f" wait p50 {duration(wait.p50_s)}, p95 {duration(wait.p95_s)} ({wait.count} replies)"
        )

    lines.append("")
    lines.append("OCS request budget (this window)")
    if summary.budget:
        rows = [("scope", "name", "bots", "used / limit", "resets in", "blocked")]
        for b in summary.budget:
            bots = ",".join(summary.budget_bots.get(b.name, [])) or "-"
            rows.append((b.scope, b.name, bots, f"{b.used} / {b.limit}" if b.limit else "-",
                         duration(b.resets_in_s) if b.limit else "-",
                         f"{duration(b.blocked_for_s)} ({b.reason})" if b.blocked_for_s > 0 else "-"))
        lines.extend(_table(rows))
        if summary.budget_sessions:
            lines.append(f"  ({summary.budget_sessions} session bucket(s) open; busiest shown)")
    else:
        lines.append("  nothing booked in the current window")

    lines.append("")
    lines.append(f"dead letters ({summary.dead_letters_total})")
    for letter in summary.dead_letters:
        lines.append(f"  {letter.id}  {clock(letter.parked_at)}  {letter.conversation}  {letter.stage}  {letter.error[:80]}")
    if summary.dead_letters_total > len(summary.dead_letters):
        lines.append("  … see: ocs-gateway dlq list")
    return "\n".join(lines)
