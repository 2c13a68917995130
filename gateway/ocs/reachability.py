"""Whether OCS answers, per origin, as this process last saw it; and the turns waiting for it.

A turn whose OCS request failed because OCS did not answer (refused, timed out, a 5xx) backs
off, as it should while OCS is down. But its timer knows nothing of OCS's return: after a minute
down, retries stood 60 s and more apart, and turns waited out their timers long after OCS was back
(up to 119 s). So the failing turn also registers here (``wait``), and the first request to that
origin that gets an answer again, any request of any turn, the token fetch, or the probe the runner
sends while turns wait (``due_probes``), wakes them all (``answered``). The budget still decides
when each woken turn's request goes, so a return is no stampede.

Memory only, one per process: a process's waiting turns are its own (it holds their leases), and
each process learns OCS's return from its own requests. Calls come from one event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

__all__ = ["Reachability"]


class Reachability:
    """Parameters:
    probe_interval_s: how often an origin with waiting turns is probed while it does not answer.
    """

    def __init__(self, *, probe_interval_s: float = 2.0) -> None:
        self.probe_interval_s = probe_interval_s
        #: Origins that did not answer, with when they were last probed (``time.monotonic()``).
        self._down: dict[str, float] = {}
        #: Conversations (``str(ConversationKey)``) whose turn waits for an origin to answer.
        self._waiting: dict[str, set[str]] = {}
        self._wake: Callable[[Iterable[str]], None] | None = None

    def on_answer(self, wake: Callable[[Iterable[str]], None]) -> None:
        """Who wakes the waiting conversations (the turn runner)."""
        self._wake = wake

    def failed(self, origin: str) -> None:
        """A request to ``origin`` got no answer (or a 5xx)."""
        self._down.setdefault(origin, time.monotonic())

    def answered(self, origin: str) -> None:
        """A request to ``origin`` got an answer below 500: OCS is there; wake who waited."""
        if self._down.pop(origin, None) is None and origin not in self._waiting:
            return
        waiting = self._waiting.pop(origin, set())
        if waiting and self._wake is not None:
            self._wake(waiting)

    def wait(self, origin: str, conversation: str) -> None:
        """``conversation``'s turn waits for ``origin`` to answer again."""
        self._waiting.setdefault(origin, set()).add(conversation)
        self._down.setdefault(origin, time.monotonic())

    def forget(self, conversation: str) -> None:
        """The conversation is no longer held here (or its turn moved on)."""
        for origin, waiting in list(self._waiting.items()):
            waiting.discard(conversation)
            if not waiting:
                del self._waiting[origin]

    def is_down(self, origin: str) -> bool:
        return origin in self._down

    def due_probes(self) -> dict[str, str]:
        """The origins to probe now (down, with turns waiting, not probed for
        ``probe_interval_s``), each with one of its waiting conversations (whose bot's client
        sends the probe); marks them probed."""
        now = time.monotonic()
        due: dict[str, str] = {}
        for origin, waiting in self._waiting.items():
            probed = self._down.get(origin)
            if waiting and (probed is None or now - probed >= self.probe_interval_s):
                self._down[origin] = now
                due[origin] = next(iter(waiting))
        return due
