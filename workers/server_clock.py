"""When a bot really finished: OCS's own timestamps, read through the offset of its clock from ours.

A task poll only says "complete somewhere after the last poll that saw it working", so a bot
polled once at 0.9 s teaches "done in (0, 0.9 s]" and the plan built on that confirms itself.
But the completed task's message carries OCS's ``created_at`` (docs/OCS.md §4.3: the persisted
reply, written when the bot finished), on OCS's clock. With the offset ``o = OCS clock − ours``
known, that is the completion time almost exactly.

The offset is bounded, never guessed, by what can only be true (all times on our shared clock):

- every OCS answer's HTTP ``Date`` (RFC 9110 section 6.6.1: the time the answer was made, truncated to
  the second, never ahead of it) was stamped when OCS looked, taken as midway through our request
  as everywhere else: ``o >= Date − looked``. Its fractional second varies from poll to poll, so
  the largest of these bounds closes in on ``o`` (after n polls it is about 1/(n+1) s short);
- a completion stamped ``C`` happened before the poll that saw it looked and after our send left:
  ``C − looked <= o <= C − sending_at``.

``ServerClock`` keeps the recent bounds and intersects them, newest first: a bound that
contradicts newer ones means OCS's clock (or ours) stepped, and the older ones go. A completion
stamp that contradicts the ``Date`` bounds is not believed (an unsaved early-exit copy, a broken
clock) and the turn is learnt from its polls alone. ``completion_interval`` narrows the polls'
interval with the stamp, and never leaves it: a skewed or absurd stamp can only make the
observation no better than the polls made it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from workers.poll_schedule import CompletionHistogram, Stamped

__all__ = ["OffsetWindow", "ServerClock", "completion_interval", "stamped_histogram"]

#: Bounds kept per OCS server: enough for the Date bounds to close to ~10 ms.
_KEEP = 256
#: How much of the Date bounds' own shortfall the narrowed interval allows below its top: with n
#: Date bounds the offset's lower bound is short by about 1/(n+1) s; this many times that covers
#: it in ~95 % of cases (the shortfall is the least of n uniform fractions of a second).
_SHORTFALL_COVER = 3.0
#: Tolerance for OCS's stamp against the polls: the reply is persisted a moment before the task's
#: result says "complete", and "looked" is an estimate (half the request's round trip).
_TOLERANCE_S = 0.02


@dataclass(frozen=True, slots=True)
class OffsetWindow:
    """``low <= OCS clock − ours <= high``; ``dates``: how many HTTP Date bounds made ``low``."""

    low: float
    high: float
    dates: int


class ServerClock:
    """One OCS server's clock against ours, from the bounds its answers give (module docstring)."""

    __slots__ = ("_bounds",)

    def __init__(self) -> None:
        #: (low, high, from a Date header), oldest first.
        self._bounds: deque[tuple[float, float, bool]] = deque(maxlen=_KEEP)

    def saw_date(self, date_s: float, looked_at: float) -> None:
        """An answer stamped ``date_s`` (epoch s, whole seconds) by OCS when it looked at ``looked_at``
        (our clock)."""
        if math.isfinite(date_s) and math.isfinite(looked_at):
            self._add(date_s - looked_at, math.inf, True)

    def saw_completion(self, created_at_s: float, *, sending_at: float, looked_at: float) -> bool:
        """A reply stamped ``created_at_s`` (OCS's clock) seen complete by a poll that looked at
        ``looked_at``, for a send that left at ``sending_at`` (ours). False, and nothing kept,
        when it contradicts what the Date bounds say (a stamp not to believe)."""
        low, high = created_at_s - looked_at - _TOLERANCE_S, created_at_s - sending_at + _TOLERANCE_S
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            return False
        window = self.window()
        if window is not None and window.dates and (low > window.high or high < window.low):
            return False
        self._add(low, high, False)
        return True

    def window(self) -> OffsetWindow | None:
        """The intersection of the recent bounds; None before any."""
        if not self._bounds:
            return None
        low, high, dates = -math.inf, math.inf, 0
        for bound_low, bound_high, is_date in reversed(self._bounds):
            low, high = max(low, bound_low), min(high, bound_high)
            dates += is_date
        return OffsetWindow(low, high, dates)

    def _add(self, low: float, high: float, is_date: bool) -> None:
        self._bounds.append((low, high, is_date))
        # Newest first, keep the bounds that agree; the first that does not (and all before it)
        # date from before a clock step and go.
        run_low, run_high, keep = low, high, 1
        for bound_low, bound_high, _ in list(reversed(self._bounds))[1:]:
            run_low, run_high = max(run_low, bound_low), min(run_high, bound_high)
            if run_low > run_high:
                break
            keep += 1
        while len(self._bounds) > keep:
            self._bounds.popleft()


def completion_interval(
    low_s: float, high_s: float, *, created_at_s: float | None, sent_at: float, window: OffsetWindow | None
) -> tuple[float, float]:
    """The interval (seconds after ``sent_at``) a turn's completion is learnt as: the polls' own
    ``(low_s, high_s]``, narrowed to what OCS's stamp says given the offset window. Never outside
    the polls' interval; the polls' interval itself when there is no stamp or it disagrees."""
    if created_at_s is None or window is None or not math.isfinite(created_at_s):
        return low_s, high_s
    completed = created_at_s - sent_at  # + the offset's negative: in (completed − high, completed − low]
    top = completed - window.low
    bottom = completed - window.high
    if window.dates:
        bottom = max(bottom, top - _SHORTFALL_COVER / (window.dates + 1))
    low, high = max(low_s, bottom), min(high_s, top)
    if not (math.isfinite(low) and math.isfinite(high)) or high < low - _TOLERANCE_S:
        return low_s, high_s  # the stamp contradicts the polls: trust the polls
    if high < low:  # within the slack of a poll: the completion was right at it
        point = min(max((low + high) / 2, low_s), high_s)
        return point, point
    return low, high


def stamped_histogram(stamped: Sequence[Stamped], window: OffsetWindow | None) -> CompletionHistogram:
    """The completion times of a bot's stamped completions (oldest first), each read through the
    offset as it is known now: a window that sharpens sharpens every one of them, so an offset
    poorly known at first never stays in what the plan is built from."""
    histogram = CompletionHistogram.empty()
    if not stamped:
        return histogram
    newest = stamped[-1].weight
    for item in stamped:
        low, high = completion_interval(item.low_s, item.high_s, created_at_s=item.y_s, sent_at=0.0, window=window)
        histogram.add(low, high, weight=item.weight / newest, decay=False)
    return histogram
