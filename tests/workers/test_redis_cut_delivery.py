"""A dropped Redis connection mid-delivery never posts a part twice: the platform took the part,
the write that marks it delivered is lost with the connection, and the worker, once Redis answers
again, goes on from the next part instead of posting that one again (``workers/hold.py``
``PostedPart``). Without a kill, nothing repeats.

The worker reaches Redis through an ``OutageProxy``; the callback receiver cuts it at the moment
a chosen part arrives, before answering, so the post succeeds and the next Redis write fails. A
short cut ends within the lease (the hold survives); a long one outlasts it (the hold ends, the
runner keeps what it posted, and its sweeper adopts the conversation again first).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.services import worker_process
from tests.conftest import Stack, settled, wait_for
from tests.support.outage_proxy import OutageProxy


def _parts(stack: Stack) -> list[dict[str, Any]]:
    with stack.receiver._lock:
        return [m for m in stack.receiver.received if m.get("conversation_id") == "c1" and m.get("type") != "progress"]


def _proxied(url: str, proxy: OutageProxy) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.hostname}:{proxy.port}").geturl()


def _cut_at(proxy: OutageProxy, part: int, seconds: float) -> Callable[[dict[str, Any]], None]:
    done = threading.Event()

    def hook(body: dict[str, Any]) -> None:
        if done.is_set() or body.get("part") != part:
            return
        done.set()
        proxy.cut()
        # Restored from another thread: the receiver answers the post at once, as a platform does.
        threading.Timer(seconds, proxy.restore).start()

    return hook


@pytest.mark.parametrize(("part", "cut_s"), [(1, 0.5), (2, 0.5), (1, 6.0)], ids=[
    "text-part-short-cut", "file-part-short-cut", "text-part-cut-past-the-lease",
])
def test_a_part_whose_delivery_mark_was_lost_with_the_redis_connection_is_not_posted_again(
    make_stack: Callable[..., Stack], part: int, cut_s: float
) -> None:
    # Each answer is two parts: its text, then a file (the simulator attaches one to every reply).
    stack = make_stack(start_worker=False)
    stack.sim.state.knobs.reply_attachments = True
    redis_addr = urlsplit(stack.redis_url)
    with OutageProxy(redis_addr.hostname or "127.0.0.1", redis_addr.port or 6379) as proxy:
        stack.receiver.on_delivery = _cut_at(proxy, part, cut_s)
        stack.worker = worker_process(stack.config, _proxied(stack.redis_url, proxy))
        stack.worker.start()
        stack.say("c1", "hello")
        wait_for(lambda: len(_parts(stack)) >= 2 and not proxy.is_cut, timeout=60, what="both parts")
        settled(stack.redis, timeout=60)
        assert proxy.cuts == 1
        repeated = {i: n for i, n in Counter(stack.receiver.attempt_ids).items() if n > 1}
        assert repeated == {}, f"parts posted more than once (webhook-id: attempts): {repeated}"
        assert [m["part"] for m in _parts(stack)] == [1, 2]
        assert stack.receiver.texts("c1") == ["Echo #1: hello"]
        stack.stop_worker()
