"""A session start whose answer was lost (a cut connection, a crash) is not repeated blindly: the
start's label is recorded before it goes out, and the next try first looks the labelled session
up in OCS's session list. OCS gives a session's token only in the start's answer (docs/OCS.md §2.5),
so a session found that way cannot be used: it is tagged ``gateway-orphan`` and the turn starts
another. What is bounded, and measured here: one orphan per start OCS acted on and whose answer
was lost, none for a start that never reached OCS, and every orphan known and tagged."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from gateway.core.keys import Keys
from gateway.core.models import ConversationKey
from gateway.ocs.client import LABEL_SEPARATOR
from gateway.ocs.simulator import SimSession
from gateway.store.conversations import parse_record
from tests.conftest import Stack, wait_for
from workers.turns import ORPHAN_TAG

NO_WATCH = {"watch_interval_s": 600.0}


def _by_conversation(stack: Stack) -> dict[str, list[SimSession]]:
    sessions: dict[str, list[SimSession]] = defaultdict(list)
    for session in stack.sim.state.list_sessions():
        sessions[session.remote_id.split(LABEL_SEPARATOR)[0]].append(session)
    return sessions


def _record_session_id(stack: Stack, conversation: str) -> str | None:
    record = parse_record(stack.redis.hgetall(Keys().conversation(ConversationKey("hooks", conversation))))
    return record.session.session_id if record.session else None


def test_a_start_whose_answer_was_lost_leaves_one_tagged_orphan_and_the_message_goes_once(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(worker=NO_WATCH)
    stack.sim.state.drop_after_accept("start")  # OCS makes the session; its answer never arrives
    stack.say("c1", "hello")
    wait_for(lambda: stack.receiver.texts("c1"), what="the answer")
    assert stack.receiver.texts("c1") == ["Echo #1: hello"]
    sessions = stack.sim.state.list_sessions()
    (used,) = [s for s in sessions if stack.sim.state.user_messages(s.id)]
    (orphan,) = [s for s in sessions if s is not used]
    assert stack.sim.state.user_messages(used.id) == ["hello"]
    assert orphan.tags == [ORPHAN_TAG] and used.tags == []
    assert orphan.remote_id.startswith("webhook:c1#") and used.remote_id.startswith("webhook:c1#")
    assert orphan.remote_id != used.remote_id  # each start its own label
    assert stack.sim.state.request_counts()["session_list"] == 1
    assert _record_session_id(stack, "c1") == used.id
    record = parse_record(stack.redis.hgetall(Keys().conversation(ConversationKey("hooks", "c1"))))
    assert record.start_label == ""  # the intent is done with the session it made
    assert stack.redis.zcard(Keys().dlq) == 0


def test_a_start_that_never_reached_ocs_leaves_no_session_behind(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(worker=NO_WATCH)
    stack.sim.state.drop_before_accept("start")  # the request leaves whole; OCS never sees it
    stack.say("c1", "hello")
    wait_for(lambda: stack.receiver.texts("c1"), what="the answer")
    assert stack.receiver.texts("c1") == ["Echo #1: hello"]
    (session,) = stack.sim.state.list_sessions()
    assert stack.sim.state.user_messages(session.id) == ["hello"] and session.tags == []
    counts = stack.sim.state.request_counts()
    assert counts["start"] == 2 and counts["session_list"] == 1 and counts["tags"] == 0


def test_a_start_refused_by_ocs_is_not_looked_up_afterwards(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(worker=NO_WATCH)
    stack.sim.state.fail_next("start", 503)  # an answer came: OCS made nothing
    stack.say("c1", "hello")
    wait_for(lambda: stack.receiver.texts("c1"), what="the answer")
    assert len(stack.sim.state.list_sessions()) == 1
    assert stack.sim.state.request_counts()["session_list"] == 0


def test_a_hundred_lost_starts_leave_one_orphan_per_start_ocs_acted_on_each_tagged(
    make_stack: Callable[..., Stack],
) -> None:
    conversations = [f"c{n:03d}" for n in range(100)]
    stack = make_stack(worker={**NO_WATCH, "max_attempts": 8})
    # 100 losses: the first 50 start requests are cut before OCS sees them, the next 50 after it
    # made their sessions. Which conversation gets which depends on timing; the totals do not.
    stack.sim.state.drop_before_accept("start", count=50)
    stack.sim.state.drop_after_accept("start", count=50)
    for conversation in conversations:
        stack.say(conversation, f"hello {conversation}")
    for conversation in conversations:
        wait_for(lambda c=conversation: stack.receiver.texts(c), timeout=90, what=f"the answer in {conversation}")
    sessions = _by_conversation(stack)
    orphans = [s for group in sessions.values() for s in group if not stack.sim.state.user_messages(s.id)]
    print(f"\n100 lost session starts (50 before OCS, 50 after): {len(orphans)} orphan sessions, "
          f"{sum(ORPHAN_TAG in s.tags for s in orphans)} tagged; {stack.sim.state.request_counts()['session_list']} "
          f"look-ups")
    assert len(orphans) == 50  # one per start OCS acted on, none for the ones it never saw
    assert all(s.tags == [ORPHAN_TAG] for s in orphans)
    for conversation in conversations:
        used = [s for s in sessions[f"webhook:{conversation}"] if stack.sim.state.user_messages(s.id)]
        assert [stack.sim.state.user_messages(s.id) for s in used] == [[f"hello {conversation}"]]
        assert stack.receiver.texts(conversation) == [f"Echo #1: hello {conversation}"]
        assert _record_session_id(stack, conversation) == used[0].id
    assert stack.redis.zcard(Keys().dlq) == 0
