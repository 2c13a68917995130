"""Worker processes SIGKILLed every few seconds while 2,000 messages flow through 200
conversations: every message reaches OCS once and in order, every OCS turn's answer is delivered
once and in order, nothing is dead-lettered.

The messages of a conversation come 0-0.3 s apart, so most arrive while its previous turn is with
OCS and go as bursts (several messages in one OCS message, ``coalesce: while_busy``): a kill can
land while a batch is begun, sent, settled or answered.

The edge, the simulator and the callback receiver run in this process; the workers are
``ocs-gateway worker`` subprocesses (tests/support/worker_procs.py) with a short lease, so a
killed worker's conversations are adopted by the others within seconds.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx

from adapters.webhook import signing
from gateway.core.keys import Keys, as_text
from gateway.core.models import ConversationKey
from gateway.ocs.client import LABEL_SEPARATOR
from gateway.ocs.simulator import LatencyModel
from tests.conftest import WEBHOOK_SECRET, Stack, wait_for, wait_while_progressing
from tests.support.worker_procs import WorkerFleet, worker_config_like
from workers.turns import ORPHAN_TAG

CONVERSATIONS = 200
MESSAGES_PER_CONVERSATION = 10
WORKERS = 3
#: A worker is killed (and a fresh one started) every this many seconds, drawn uniformly.
KILL_EVERY_S = (2.0, 3.0)
#: Requests the sender has in flight at once.
SEND_CONCURRENCY = 32

#: Short leases so adoption after a SIGKILL takes seconds; the rest as in FAST_TUNING.
STORM_TUNING = {
    "lease_ttl_s": 2.0,
    "stall_grace_s": 1.0,
    "sweep_interval_s": 0.25,
    # A send cut off by a kill is settled from the session history; the simulator records the
    # user message half-way through a reply latency of at most a few tenths of a second.
    "reconcile_grace_s": 2.0,
    # Bot-initiated polls still run (they could repeat a reply), at a pace the loopback OCS bears.
    "watch_interval_s": 5.0,
}

#: 2,000 turns make several thousand OCS requests in a minute: far past the default budget (the
#: hosted WAF's 2,000 / 5 min), which would pause every turn until the window turns over. This
#: test is about kills, not budgets (tests of the budget exercise those limits).
STORM_BUDGET = {"requests_per_window": 1_000_000, "session_requests_per_window": 10_000, "starts_per_window": 10_000}

#: Log lines worth counting in the report.
_EVENTS = {
    "adopted": "adopted ",
    "lease lost": "lost the lease",
    "send without answer": "send without answer",
    "resent after grace": "message never reached OCS",
    "orphan sessions found": "orphan OCS session",
    "lost starts that made none": "made no session",
    "unexpected error": "unexpected error",
    "dead-lettered": "dead-lettered",
    "bot-initiated queued": "bot-initiated message(s)",
    "Redis pool refused": "Too many connections",
}
KEYS = Keys()


def _conversation(index: int) -> str:
    return f"storm-{index:03d}"


async def _send_all(edge_url: str, rng: random.Random) -> list[tuple[str, int, int]]:
    """Post every message, each conversation's in order (one waits for the previous one's
    acknowledgement), conversations interleaved; returns the refusals (conversation, index,
    status)."""
    key = signing.decode_secret(WEBHOOK_SECRET)
    gate = asyncio.Semaphore(SEND_CONCURRENCY)
    refused: list[tuple[str, int, int]] = []
    delays = {c: [rng.uniform(0.0, 0.3) for _ in range(MESSAGES_PER_CONVERSATION)] for c in range(CONVERSATIONS)}

    async def one_conversation(client: httpx.AsyncClient, index: int) -> None:
        conversation = _conversation(index)
        for n in range(MESSAGES_PER_CONVERSATION):
            await asyncio.sleep(delays[index][n])
            body = httpx.Request("POST", "/", json={
                "conversation_id": conversation, "sender": {"id": f"user-{conversation}", "name": "Ada"}, "text": f"m{n}",
            }).content  # fmt: skip
            headers = signing.signed_headers(key, f"msg_{conversation}_{n}", body)
            async with gate:
                response = await _post(client, f"{edge_url}/webhooks/hooks", body, headers)
            if response.status_code != 200:
                refused.append((conversation, n, response.status_code))

    limits = httpx.Limits(max_connections=SEND_CONCURRENCY, max_keepalive_connections=SEND_CONCURRENCY)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(one_conversation(client, i) for i in range(CONVERSATIONS)))
    return refused


async def _post(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST as a Standard Webhooks sender does: a connection lost on the way (here, a kept-alive
    connection the server closed as it was reused, on a loaded machine) is sent again under the
    same webhook-id, which the edge deduplicates."""
    for attempt in range(5):
        try:
            return await client.post(url, content=body, headers=headers)
        except httpx.TransportError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _killer(fleet: WorkerFleet, stop: threading.Event, rng: random.Random, errors: list[BaseException]) -> None:
    """SIGKILL a random live worker and start a replacement, every few seconds, until told to
    stop (or after five minutes, so it always ends by itself)."""
    deadline = time.monotonic() + 300
    try:
        while not stop.wait(rng.uniform(*KILL_EVERY_S)) and time.monotonic() < deadline:
            alive = fleet.alive()
            if alive:
                fleet.kill(rng.choice(alive))
            fleet.start(wait=False)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def _wait_while_progressing(count: Callable[[], int], target: int, *, stall_s: float, what: str) -> None:
    """Fail once ``count()`` has not grown for ``stall_s`` short of ``target`` (a storm that
    stopped answering fails in a minute, not at some total deadline)."""
    best = wait_while_progressing(count, target, stall_s=stall_s, interval=0.5)
    if best < target:
        raise AssertionError(f"{what}: stuck at {best} of {target} for {stall_s:.0f}s")


def _where_they_stand(stack: Stack, conversations: list[str], *, show: int = 5) -> str:
    """For a failure message: the unfinished conversations and the first few's ledgers."""
    short = [c for c in conversations if _covered(stack.receiver.texts(c)) < MESSAGES_PER_CONVERSATION]
    shown = {}
    for conversation in short[:show]:
        key = ConversationKey("hooks", conversation)
        turn = stack.redis.hgetall(KEYS.turn(key))
        shown[conversation] = {
            "replies": len(stack.receiver.texts(conversation)),
            "inbox": stack.redis.llen(KEYS.inbox(key)),
            "lease ttl ms": stack.redis.pttl(KEYS.lease(key)),
            "turn": {
                as_text(k): as_text(v)[:60]
                for k, v in turn.items()
                if k in (b"state", b"attempts", b"next_at", b"last_error")
            },
        }
    return f"{len(short)} conversation(s) unfinished, e.g. {shown}"


_EXPECTED = [f"m{n}" for n in range(MESSAGES_PER_CONVERSATION)]


def _expected_replies(ocs_messages: list[str]) -> list[str]:
    """One answer per OCS message, in order (the simulator echoes what it was sent)."""
    return [f"Echo #{n + 1}: {text}" for n, text in enumerate(ocs_messages)]


def _covered(texts: list[str]) -> int:
    """How many of the user's messages these answers answer (a burst's answer echoes them all)."""
    return sum(len(text.partition(": ")[2].split("\n\n")) for text in texts)


def test_sigkill_storm_answers_every_message_once_and_in_order(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(start_worker=False, worker=STORM_TUNING)
    stack.sim.state.knobs.reply_latency = LatencyModel.lognormal(0.1, 0.2)
    stack.sim.state.knobs.latency_seed = 7
    config = worker_config_like(
        stack.config, tmp_path, redis_url=stack.redis_url, webhook_secret=WEBHOOK_SECRET, bot={"budget": STORM_BUDGET}
    )
    rng = random.Random(20261128)
    stop = threading.Event()
    killer_errors: list[BaseException] = []
    conversations = [_conversation(i) for i in range(CONVERSATIONS)]

    def answered() -> int:
        return sum(min(_covered(stack.receiver.texts(c)), MESSAGES_PER_CONVERSATION) for c in conversations)

    with WorkerFleet(config, tmp_path) as fleet:
        for _ in range(WORKERS):
            fleet.start()
        started = time.monotonic()
        killer = threading.Thread(target=_killer, args=(fleet, stop, rng, killer_errors), daemon=True)
        killer.start()
        try:
            refused = asyncio.run(_send_all(stack.url, rng))
            sent_s = time.monotonic() - started
            assert not refused, f"the edge refused messages: {refused[:10]}"
            try:
                _wait_while_progressing(
                    answered, CONVERSATIONS * MESSAGES_PER_CONVERSATION, stall_s=60, what="replies under the kill storm"
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}; {_where_they_stand(stack, conversations)}; logs in {tmp_path}") from None
            answered_s = time.monotonic() - started
        finally:
            stop.set()
            killer.join(timeout=60)
        assert not killer_errors, f"the killer failed: {killer_errors[0]!r}"
        # Nothing left to do anywhere: every turn finished and every conversation was let go.
        wait_for(lambda: stack.redis.zcard(KEYS.active) == 0, timeout=60, what="no conversation left with work")
        # Give the watches (the other way a reply could come twice) a full round
        # over the finished sessions before counting.
        polls_before = stack.sim.state.request_counts()["session_poll"]
        wait_for(
            lambda: stack.sim.state.request_counts()["session_poll"] >= polls_before + CONVERSATIONS,
            timeout=60, interval=0.25, what="a round of watches after the storm",
        )  # fmt: skip
        wait_for(lambda: stack.redis.zcard(KEYS.active) == 0, timeout=60, what="no conversation left with work")
        kills = fleet.kills
        events = {name: fleet.count_in_logs(needle) for name, needle in _EVENTS.items()}
        (tmp_path / "all-workers.log").write_text(fleet.log_text(), encoding="utf-8")

    sessions = defaultdict(list)
    for session in stack.sim.state.list_sessions():
        sessions[session.remote_id.split(LABEL_SEPARATOR)[0]].append(session)  # the start's label after it
    orphans = 0
    untagged: list[str] = []
    wrong_ocs: dict[str, list[list[str]]] = {}
    wrong_replies: dict[str, list[str]] = {}
    ocs_turns = 0
    for conversation in conversations:
        used = [s for s in sessions[f"webhook:{conversation}"] if stack.sim.state.user_messages(s.id)]
        unused = [s for s in sessions[f"webhook:{conversation}"] if s not in used]
        orphans += len(unused)
        untagged += [s.id for s in unused if ORPHAN_TAG not in s.tags]
        seen = [stack.sim.state.user_messages(s.id) for s in used]
        # Each message exactly once, in order, in one session: the OCS messages, split where a
        # burst joined its messages, are m0..m9.
        if len(seen) != 1 or [m for text in seen[0] for m in text.split("\n\n")] != _EXPECTED:
            wrong_ocs[conversation] = seen
            continue
        ocs_turns += len(seen[0])
        if stack.receiver.texts(conversation) != _expected_replies(seen[0]):
            wrong_replies[conversation] = stack.receiver.texts(conversation)
    redelivered = stack.receiver.attempts - len(stack.receiver.received)
    dead = stack.redis.zcard(KEYS.dlq)

    print(
        f"\nkill storm: {CONVERSATIONS * MESSAGES_PER_CONVERSATION} messages, {CONVERSATIONS} conversations, "
        f"{WORKERS} workers, {kills} SIGKILLs; all posted after {sent_s:.1f}s, all answered after "
        f"{answered_s:.1f}s; callbacks redelivered (same webhook-id, dropped by the receiver): {redelivered}; "
        f"empty orphan OCS sessions: {orphans} ({orphans - len(untagged)} found and tagged); dead letters: {dead}; "
        f"OCS turns: {ocs_turns} ({CONVERSATIONS * MESSAGES_PER_CONVERSATION / max(ocs_turns, 1):.2f} messages each); "
        f"worker log events: {events}; "
        f"logs: {tmp_path / 'all-workers.log'}"
    )
    assert kills >= 3, f"the storm killed only {kills} worker(s): it did not test adoption"
    assert not wrong_ocs, (
        f"{len(wrong_ocs)} conversation(s) whose OCS session did not receive m0..m9 exactly once, in one "
        f"session, in order, e.g. {dict(list(wrong_ocs.items())[:3])}"
    )
    assert not wrong_replies, (
        f"{len(wrong_replies)} conversation(s) whose replies are not one per OCS message, in order, "
        f"e.g. {dict(list(wrong_replies.items())[:3])}"
    )
    assert ocs_turns < CONVERSATIONS * MESSAGES_PER_CONVERSATION, "no burst went as one: the storm did not test batches"
    assert dead == 0, f"{dead} dead letter(s)"
    # A start whose answer a kill lost is looked up by the next owner: every orphan is known.
    assert not untagged, f"{len(untagged)} of {orphans} orphan session(s) not found by their label: {untagged[:5]}"
