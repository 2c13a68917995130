"""Bursts: the messages of one conversation that queued up while its previous turn was with
OCS go to OCS together, as its next turn.

Nothing here waits or writes. ``plan`` picks, from the inbox's first items, those the next turn
covers; the turn ledger records them when the turn begins (``TurnLedger.begin``), so a crash at
any point resumes the same batch, settles it by count as one OCS message, and removes all of it
at the end. ``combine`` says what OCS is sent for a batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.core.config import CoalesceConfig
from gateway.core.models import Attachment, Inbound, InboundKind

__all__ = ["Combined", "Plan", "combine", "plan"]

#: Between two messages of a batch: a blank line, as people separate paragraphs.
_JOIN = "\n\n"


@dataclass(frozen=True, slots=True)
class Plan:
    """The inbox items the next turn covers (the head first), or, while a quiet window is still
    open, when to look again (``wait_until``, on the shared clock) before beginning."""

    items: tuple[str, ...]
    wait_until: float | None = None


def plan(queue: Sequence[str], coalesce: CoalesceConfig, *, now: float) -> Plan:
    """The next turn's items from the inbox's first ``queue`` items.

    Only user messages join a batch: a command (``/reset``, a webhook ``reset``) or a
    bot-initiated message closes the batch before it and goes alone. The first message always
    goes; the others while the batch stays within ``max_messages`` and ``max_chars`` of text.
    An item that cannot be read also closes the batch (it then fails as the head of its own).
    """
    head, rest = queue[0], queue[1 : coalesce.depth]
    try:
        first = Inbound.from_json(head)
    except (ValueError, KeyError, TypeError):
        return Plan((head,))
    if first.kind is not InboundKind.MESSAGE:
        return Plan((head,))
    items, newest, chars, closed = [head], first, len(first.text), False
    for raw in rest:
        try:
            inbound = Inbound.from_json(raw)
        except (ValueError, KeyError, TypeError):
            closed = True
            break
        chars += len(_JOIN) + len(inbound.text)
        if inbound.kind is not InboundKind.MESSAGE or chars > coalesce.max_chars:
            closed = True
            break
        items.append(raw)
        newest = inbound
    quiet_s = coalesce.quiet_ms / 1000.0
    room = len(items) < coalesce.depth and not closed and len(queue) <= len(items)
    if quiet_s > 0 and room and newest.received_at + quiet_s > now:
        return Plan(tuple(items), wait_until=newest.received_at + quiet_s)
    return Plan(tuple(items))


@dataclass(frozen=True, slots=True)
class Combined:
    """What OCS is sent for a batch."""

    text: str
    attachments: tuple[tuple[Attachment, Inbound], ...]


def combine(inbounds: Sequence[Inbound], *, heard: Mapping[int, Sequence[str]] | None = None) -> Combined:
    """The batch's texts joined with a blank line, in order, each named by its sender when the
    batch has several senders (a group), and every attachment with the message it came with.
    ``heard``: by the message's place in the batch, the lines its voice notes came to, after its
    own text (``workers/voice_notes.py``)."""
    several = len({inbound.sender_id for inbound in inbounds}) > 1
    texts: list[str] = []
    for index, inbound in enumerate(inbounds):
        lines = heard.get(index, ()) if heard else ()
        text = "\n".join(part for part in (inbound.text.strip(), *lines) if part)
        if text:
            texts.append(f"{inbound.sender_name or inbound.sender_id}: {text}" if several else text)
    attachments = tuple((attachment, inbound) for inbound in inbounds for attachment in inbound.attachments)
    return Combined(_JOIN.join(texts), attachments)
