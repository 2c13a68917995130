"""Two worker hosts whose clocks disagree by ten seconds (one +5 s, one -5 s) share the
conversations without a stall: every time that leaves a process is Redis's, so a turn adopted
from a killed host across the skew is picked up within the lease's life, not ten seconds late.

The workers are ``ocs-gateway worker`` subprocesses whose ``time.time()`` is skewed from
interpreter start (tests/support/worker_procs.py). A clock-dependent adoption would wait the
skew on top: the deadlines below (``REPLY_WITHIN_S``) are shorter than that.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from gateway.core.keys import Keys
from gateway.core.models import ConversationKey
from gateway.ocs.client import LABEL_SEPARATOR
from tests.conftest import WEBHOOK_SECRET, Stack, wait_for
from tests.support.worker_procs import WorkerFleet, WorkerProc, worker_config_like

CONVERSATIONS = 20
SKEW_S = 5.0
#: Longest wait for a reply, from the message (or from the kill of its owner). Normal: well
#: under a second; after a kill: the lease TTL, the stall grace and a sweep, about 3.5 s. A
#: stall across the skew would add 10 s.
REPLY_WITHIN_S = 8.0
#: Kill rounds: the bot takes this long, so the turns outlive the heir's start-up, and the
#: owner is killed this long after the messages.
BOT_LATENCY_S = 6.0
KILL_AFTER_S = 3.0
KEYS = Keys()
SKEW_TUNING = {"lease_ttl_s": 2.0, "stall_grace_s": 1.0, "sweep_interval_s": 0.25, "reconcile_grace_s": 2.0}


def _conversations() -> list[str]:
    return [f"skew-{i:02d}" for i in range(CONVERSATIONS)]


def _await_replies(stack: Stack, count: int, *, since: float, what: str) -> float:
    """Wait until every conversation has ``count`` replies, each within ``REPLY_WITHIN_S`` of
    ``since`` (monotonic); the longest wait seen."""
    arrived: dict[str, float] = {}

    def all_here() -> bool:
        for conversation in _conversations():
            if conversation not in arrived and len(stack.receiver.texts(conversation)) >= count:
                arrived[conversation] = time.monotonic() - since
        return len(arrived) == CONVERSATIONS

    remaining = REPLY_WITHIN_S - (time.monotonic() - since)
    try:
        wait_for(all_here, timeout=max(remaining, 0.0), interval=0.02, what=what)
    except AssertionError:
        late = sorted(set(_conversations()) - set(arrived))
        raise AssertionError(f"{what}: no reply within {REPLY_WITHIN_S}s for {late}") from None
    return max(arrived.values())


def _say_to_all(stack: Stack, text: str) -> float:
    for conversation in _conversations():
        assert stack.say(conversation, text, msg_id=f"msg_{conversation}_{text}").status_code == 200
    return time.monotonic()


def _all_waiting_on_ocs(stack: Stack) -> bool:
    return all(stack.redis.hget(KEYS.turn(ConversationKey("hooks", c)), "state") == b"sent" for c in _conversations())


def _turns_done(proc: WorkerProc) -> int:
    return proc.log().count("turn done ")


def _hand_over(
    stack: Stack, fleet: WorkerFleet, owner: WorkerProc, heir_skew_s: float, round_no: int
) -> tuple[WorkerProc, float]:
    """With ``owner`` the only live worker: a message to every conversation, a new worker on the
    other side of the skew, then ``owner`` SIGKILLed while every turn waits on OCS. The heir
    must adopt them all (through the sweeper's overdue list or its due watches) and
    answer within the deadline, measured from the kill."""
    stack.sim.state.knobs.reply_latency_s = BOT_LATENCY_S
    posted = _say_to_all(stack, f"r{round_no}")
    heir = fleet.start(skew_s=heir_skew_s)
    wait_for(lambda: _all_waiting_on_ocs(stack), timeout=20, what=f"round {round_no}: every turn sent to OCS")
    # Kill half-way through OCS's work, so the wait measured below is the adoption's, not the bot's.
    time.sleep(max(posted + KILL_AFTER_S - time.monotonic(), 0.0))
    done_before = _turns_done(heir)
    fleet.kill(owner)
    killed_at = time.monotonic()
    longest = _await_replies(
        stack, round_no, since=killed_at, what=f"round {round_no} (owner {owner.skew_s:+.0f}s killed)"
    )
    # Every turn was waiting on OCS when its owner died: the heir finished all of them (it logs
    # so just after the callback).
    wait_for(
        lambda: _turns_done(heir) - done_before >= CONVERSATIONS, timeout=10,
        what=f"round {round_no}: the heir ({heir_skew_s:+.0f}s) finishing every turn",
    )  # fmt: skip
    return heir, longest


def test_workers_with_skewed_clocks_adopt_each_others_turns_without_a_stall(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(start_worker=False, worker=SKEW_TUNING)
    config = worker_config_like(stack.config, tmp_path, redis_url=stack.redis_url, webhook_secret=WEBHOOK_SECRET)
    delays: dict[str, float] = {}
    with WorkerFleet(config, tmp_path) as fleet:
        ahead = fleet.start(skew_s=SKEW_S)
        behind = fleet.start(skew_s=-SKEW_S)
        for proc in (ahead, behind):
            observed = proc.observed_skew_s()
            assert observed is not None and abs(observed - proc.skew_s) < 1.5, (
                f"{proc.name}: clock skew {observed} s, wanted {proc.skew_s} s"
            )

        # Round 1: both hosts up, turns spread over both.
        stack.sim.state.knobs.reply_latency_s = 0.3
        delays["both up"] = _await_replies(stack, 1, since=_say_to_all(stack, "r1"), what="round 1 (both up)")

        # Round 2: the host behind is gone; the one ahead takes every turn and is killed
        # mid-turn; a new host behind adopts them.
        fleet.kill(behind)
        behind, delays["ahead killed, behind adopts"] = _hand_over(stack, fleet, ahead, -SKEW_S, 2)

        # Round 3: the mirror image: a host ahead adopts from the killed host behind.
        ahead, delays["behind killed, ahead adopts"] = _hand_over(stack, fleet, behind, SKEW_S, 3)

        # Round 4: both up again.
        behind = fleet.start(skew_s=-SKEW_S)
        stack.sim.state.knobs.reply_latency_s = 0.3
        delays["both up again"] = _await_replies(stack, 4, since=_say_to_all(stack, "r4"), what="round 4 (both up)")
        wait_for(lambda: stack.redis.zcard(KEYS.active) == 0, timeout=20, what="no conversation left with work")
        (tmp_path / "all-workers.log").write_text(fleet.log_text(), encoding="utf-8")

    print(
        f"\nclock skew ±{SKEW_S:.0f}s, longest wait for a reply per round: "
        + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in delays.items())
    )
    expected_ocs = [f"r{n}" for n in range(1, 5)]
    expected_replies = [f"Echo #{n}: r{n}" for n in range(1, 5)]
    sessions = {s.remote_id.split(LABEL_SEPARATOR)[0]: s for s in stack.sim.state.list_sessions()}
    for conversation in _conversations():
        session = sessions[f"webhook:{conversation}"]
        assert stack.sim.state.user_messages(session.id) == expected_ocs, conversation
        assert stack.receiver.texts(conversation) == expected_replies, conversation
    assert len(sessions) == CONVERSATIONS
    # A worker killed between a platform call and its record repeats the part it was sending, in
    # each conversation it was delivering to, when its heir adopts the turn (at-least-once to the
    # platform, docs/ARCHITECTURE.md); the repeat carries the same webhook-id, so a receiver tells
    # it apart. So a part may repeat once per kill at most, and nothing else may repeat. (A slow
    # machine can hold several conversations between send and record when the kill lands.)
    assert set(stack.receiver.attempt_ids) == set(stack.receiver.webhook_ids)
    sends = Counter(stack.receiver.attempt_ids)
    over = {webhook_id: n for webhook_id, n in sends.items() if n - 1 > fleet.kills}
    assert not over, f"parts repeated more often than workers were killed ({fleet.kills}): {over}"
    assert stack.redis.zcard(KEYS.dlq) == 0
