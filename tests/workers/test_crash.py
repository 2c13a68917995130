"""A worker killed with SIGKILL in the middle of a turn, after OCS accepted the message, leaves
the turn to another worker, which delivers exactly one reply and never resends to OCS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.ocs.simulator import DEMO_CHATBOT_ID
from tests.conftest import FAST_TUNING, WEBHOOK_SECRET, Stack, wait_for


def _worker_process(stack: Stack, tmp_path: Path) -> subprocess.Popen[bytes]:
    config = tmp_path / "gateway.yaml"
    tuning = "".join(f"  {k}: {v}\n" for k, v in FAST_TUNING.items())
    config.write_text(
        f"redis_url: {stack.redis_url}\n"
        f"bots:\n  demo:\n    base_url: {stack.sim.url}\n    chatbot_id: {DEMO_CHATBOT_ID}\n"
        "    client_id: demo-client\n    client_secret: ${DEMO_SECRET}\n    task_timeout_s: 20\n"
        "channels:\n  hooks:\n    type: webhook\n    bot: demo\n    secret: ${HOOK_SECRET}\n"
        f"    callback_url: {stack.config.channels['hooks'].callback_url}\n"
        f"worker:\n{tuning}"
    )
    env = {**os.environ, "DEMO_SECRET": "demo-secret", "HOOK_SECRET": WEBHOOK_SECRET}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "--config", str(config), "worker"],
        env=env, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def test_worker_killed_mid_turn_gives_exactly_one_reply(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    stack = make_stack(start_worker=False)
    stack.sim.state.knobs.reply_latency_s = 3.0
    doomed = _worker_process(stack, tmp_path)
    try:
        stack.say("c1", "survive this")
        # OCS has the message and the ledger has its task id: the turn is waiting on OCS.
        wait_for(lambda: stack.redis.hget("ocsgw:turn:hooks/c1", "state") == b"sent", timeout=20, what="the send")
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=10)
    finally:
        if doomed.poll() is None:
            doomed.kill()
    survivor = _worker_process(stack, tmp_path)
    try:
        wait_for(lambda: stack.receiver.texts("c1"), timeout=30, what="the reply from the second worker")
        # A duplicate would be delivered before the conversation's next turn: ask once more.
        stack.say("c1", "still one?")
        wait_for(lambda: len(stack.receiver.texts("c1")) >= 2, timeout=30, what="the next reply")
        assert stack.receiver.texts("c1") == ["Echo #1: survive this", "Echo #2: still one?"]
        (session,) = stack.sim.state.list_sessions()
        assert stack.sim.state.user_messages(session.id) == ["survive this", "still one?"]
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.wait(timeout=30)


def test_worker_stops_cleanly_on_sigterm(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    stack = make_stack(start_worker=False)
    worker = _worker_process(stack, tmp_path)
    stack.say("c1", "hello")
    wait_for(lambda: stack.receiver.texts("c1"), timeout=20, what="a reply")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
