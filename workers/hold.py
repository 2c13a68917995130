"""A conversation this process owns, and what a step of its turn engine asks for next.

``Hold`` is the owner's memory of what Redis holds for the conversation: the turn, the
conversation record and the inbox's head. It has one way in for each of them: ``refresh`` reads
all three, ``write`` applies fenced writes through the lease and only then takes the values those
writes stored (``end_turn`` also learns the next head), and ``keep`` moves the turn on in memory alone (a task poll that saw no answer
writes nothing). Nothing else assigns them, so the memory cannot drift from what was written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

from gateway.core.models import ConversationKey
from gateway.store.conversations import ConversationRecord
from gateway.store.lease import Lease, LeaseLost, Op
from gateway.store.ledger import Turn, TurnLedger

__all__ = ["CONTINUE", "Hold", "IDLE", "Outcome", "PostedPart", "wait_until"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the runner does after a step: step again now, wait until ``at``, or let go."""

    kind: Literal["continue", "wait", "idle"]
    #: For "wait": when to step again, on the shared clock (``RedisClock.now``).
    at: float = 0.0


CONTINUE: Final = Outcome("continue")
IDLE: Final = Outcome("idle")


def wait_until(at: float) -> Outcome:
    return Outcome("wait", at)


@dataclass(frozen=True, slots=True)
class PostedPart:
    """A reply part the platform took whose delivery mark may not be in Redis yet: a fact, so it
    stays true whatever Redis says afterwards (the mark's write was lost with its connection, the
    lease lapsed meanwhile). Delivery consults it instead of posting the part again."""

    turn_id: str
    index: int
    platform_id: str


class _Keep:
    """The default of ``Hold.write``'s ``turn`` and ``record``: leave that memory as it is."""


_KEEP: Final = _Keep()


@dataclass
class Hold:
    """A conversation this process owns through ``lease``.

    Who writes what: ``turn``, ``record`` and ``head`` change only through ``refresh``,
    ``write``, ``end_turn`` and ``keep``; ``stale`` is set by ``invalidate`` (the runner, when new inbox items
    arrive between turns; a write whose outcome is unknown) and cleared by ``refresh``;
    ``failures`` belongs to the failure policy (``workers/failures.py``); ``ready_at`` is set by
    the engine when it finds the answer and taken once by delivery (``workers/delivery.py``);
    ``posted`` is delivery's too (set once the platform took a part, cleared once its mark is
    written), and the runner carries it over to the next hold of the conversation in this process.
    """

    conv: ConversationKey
    lease: Lease
    _turn: Turn | None = field(default=None, repr=False)
    _record: ConversationRecord | None = field(default=None, repr=False)
    _queue: tuple[str, ...] = field(default=(), repr=False)
    #: The memory may be behind Redis (after an error, or new inbox items): read before stepping.
    stale: bool = True
    #: Unexpected failures in a row (reset by any step that completes).
    failures: int = 0
    #: When OCS most likely completed the current turn's task (shared clock), until its first
    #: part reaches the platform: the start of ``ocsgw_reply_delay_seconds``. Memory only: a
    #: turn adopted after a crash is simply not measured.
    ready_at: float | None = None
    #: When the bot's learned schedule would poll the current task next (shared clock): a poll
    #: before then is made only to show OCS's progress, and yields first to the request budget.
    #: The engine's; memory only (a new owner polls on the schedule).
    schedule_at: float | None = None
    #: The part posted whose mark was not yet written (``PostedPart``), else None.
    posted: PostedPart | None = None
    #: Set by the runner when OCS answers again while this turn backs off from it: the next step
    #: goes at once instead of waiting out the backoff. The engine takes it (``take_wake``).
    woken: bool = False

    @property
    def turn(self) -> Turn | None:
        return self._turn

    @property
    def record(self) -> ConversationRecord:
        """The conversation record (read before the first step, so never missing then)."""
        if self._record is None:
            raise RuntimeError("the conversation record has not been read yet")
        return self._record

    @property
    def head(self) -> str | None:
        """The inbox's first item: the next turn's first message."""
        return self._queue[0] if self._queue else None

    @property
    def queue(self) -> tuple[str, ...]:
        """The inbox's first items, as many as the last read asked for (the head first)."""
        return self._queue

    @property
    def loaded(self) -> bool:
        return self._record is not None and not self.stale

    def invalidate(self) -> None:
        """Redis may hold more than the memory: read it again before the next step."""
        self.stale = True

    async def refresh(self, ledger: TurnLedger, *, depth: int = 1) -> None:
        """Read the turn, the conversation record and the inbox's first ``depth`` items again
        (one round trip)."""
        snapshot = await ledger.load(self.conv, depth=depth)
        self._turn, self._record, self._queue = snapshot.turn, snapshot.record, snapshot.queue
        self.stale = False

    async def write(
        self,
        ops: list[Op],
        *,
        turn: Turn | _Keep | None = _KEEP,
        record: ConversationRecord | _Keep = _KEEP,
    ) -> list[Any]:
        """Apply ``ops`` through the lease; once they are applied, the memory holds ``turn`` and
        ``record`` where given (the values those ops stored).

        Raises:
            LeaseLost: another process owns the conversation now; nothing was written.
        """
        try:
            result = await self.lease.run(ops)
        except LeaseLost:
            raise
        except BaseException:
            self.stale = True  # we cannot tell whether it was written
            raise
        if not isinstance(turn, _Keep):
            self._turn = turn
        if not isinstance(record, _Keep):
            self._record = record
        return result

    async def end_turn(self, ops: list[Op], *, inbox: str, depth: int = 1) -> None:
        """Apply ``ops``, which end the current turn, and learn the inbox's new first ``depth``
        items in the same round trip (the next turn begins from them without another read)."""
        result = await self.write([*ops, Op("LRANGE", inbox, (0, depth - 1))], turn=None)
        self._queue = tuple(item.decode() if isinstance(item, bytes) else str(item) for item in result[-1] or ())

    def posted_id(self, turn_id: str, index: int) -> str | None:
        """The platform's id of part ``index`` of turn ``turn_id`` if this process posted it and
        its mark may be missing; None when it must still be sent."""
        posted = self.posted
        if posted is not None and posted.turn_id == turn_id and posted.index == index:
            return posted.platform_id
        return None

    def take_wake(self) -> bool:
        """Whether the runner woke the turn early (and forget it: one early step per wake)."""
        woken, self.woken = self.woken, False
        return woken

    def keep(self, turn: Turn) -> None:
        """Move the turn on in this process's memory only: a new owner after a crash starts from
        what was last written (a poll again, a step at once), which is always safe."""
        self._turn = turn
