"""OCS's answers become typed values once, in the client, as leniently as the engine always read
them: new fields are ignored, odd values coerced, entries that are not objects skipped
(docs/OCS.md §4.3, §4.4, §5)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.models import ReplyAttachment
from gateway.ocs.messages import (
    MessageRole,
    OCSMessage,
    SessionPage,
    SessionStatus,
    TaskPoll,
    TaskStatus,
)

URL = "https://www.openchatstudio.com/api/files/9931/content"
FILE = {"name": "roster.pdf", "content_type": "application/pdf", "size": 48213, "content_url": URL}


def test_the_contracts_example_message_parses_with_its_attachment() -> None:
    message = OCSMessage.parse({
        "created_at": "2026-08-21T14:27:31.904112Z", "role": "assistant", "content": "Yes.",
        "metadata": {"generated_files": [9931]}, "tags": [], "attachments": [FILE],
    })  # fmt: skip
    assert message == OCSMessage(
        role=MessageRole.ASSISTANT, content="Yes.", created_at="2026-08-21T14:27:31.904112Z",
        attachments=(ReplyAttachment("roster.pdf", "application/pdf", 48213, URL),),
    )  # fmt: skip


def test_odd_values_are_coerced_and_strays_skipped() -> None:
    message = OCSMessage.parse({
        "role": "moderator", "content": None, "new_field": {"x": 1},
        "attachments": [{"size": "big"}, "not an object", 7],
    })  # fmt: skip
    assert message.role is None and message.content == "" and message.created_at is None
    assert message.attachments == (ReplyAttachment("file", "application/octet-stream", 0, ""),)
    assert OCSMessage.parse({"attachments": "nope"}).attachments == ()


@pytest.mark.parametrize(
    ("body", "failed", "status", "error"),
    [
        ({"status": "processing", "message": None}, False, TaskStatus.PROCESSING, None),
        ({"status": "processing", "message": {"role": "assistant", "content": "Thinking…"}}, False, TaskStatus.PROCESSING, None),
        ({"status": "processing"}, False, TaskStatus.PROCESSING, None),
        ({"status": "complete", "message": "not an object"}, False, TaskStatus.PROCESSING, None),
        ({"status": "error", "error": "Please rephrase."}, True, TaskStatus.ERROR, "Please rephrase."),
        ({"error": "Unknown error"}, True, TaskStatus.ERROR, "Unknown error"),
        ({"status": "error"}, False, TaskStatus.ERROR, "Unknown error"),
    ],
)
def test_task_polls_read_as_ocs_means_them(body: dict[str, Any], failed: bool, status: TaskStatus, error: str | None) -> None:
    poll = TaskPoll.parse(body, failed=failed)
    assert (poll.status, poll.error, poll.message) == (status, error, None)


def test_a_complete_task_carries_its_message() -> None:
    poll = TaskPoll.parse({"status": "complete", "message": {"role": "assistant", "content": "Hi"}}, failed=False)
    assert poll.status is TaskStatus.COMPLETE and poll.message is not None and poll.message.content == "Hi"


def test_a_session_page_skips_strays_and_knows_an_ended_session() -> None:
    page = SessionPage.parse({"messages": [{"role": "user", "content": "a"}, None], "has_more": 1, "session_status": "ended"})
    assert [m.role for m in page.messages] == [MessageRole.USER] and page.has_more is True
    assert page.session_status is SessionStatus.ENDED
    assert SessionPage.parse({}) == SessionPage((), False, SessionStatus.ACTIVE)
