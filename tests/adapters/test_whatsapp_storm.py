"""Worker processes SIGKILLed every few seconds while WhatsApp conversations flow: every message
reaches OCS once and in order, every OCS turn's answer reaches the user once and in order, and
nothing is dead-lettered, with pacing and the delivery records in Redis across the workers.

A modest storm (tests/workers/test_kill_storm.py is the large one, over webhooks): 30 users, 8
messages each over about 8 s, 3 ``ocs-gateway worker`` subprocesses with short leases; Meta's webhooks are
POSTed to the edge in this process, and the workers call the fake Graph API.
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

from gateway.core.keys import Keys
from gateway.ocs.client import LABEL_SEPARATOR
from gateway.ocs.simulator import LatencyModel
from tests.adapters._whatsapp import APP_SECRET, VERIFY_TOKEN, channel_settings
from tests.conftest import WEBHOOK_SECRET, Stack, wait_for
from tests.fakes.whatsapp_api import (
    PHONE_NUMBER_ID,
    TOKEN,
    FakeWhatsApp,
    encode,
    fake_whatsapp,  # noqa: F401 - fixture
    message_webhook,
    signed_headers,
)
from tests.support.worker_procs import WorkerFleet, worker_config_like

USERS = 30
MESSAGES = 8
WORKERS = 3
KILL_EVERY_S = (1.5, 2.5)
STORM_TUNING = {"lease_ttl_s": 2.0, "stall_grace_s": 1.0, "sweep_interval_s": 0.25, "reconcile_grace_s": 2.0,
                "watch_interval_s": 5.0}
STORM_BUDGET = {"requests_per_window": 1_000_000, "session_requests_per_window": 10_000, "starts_per_window": 10_000}
#: Fast pacing: the storm is about kills; the pair-rate tests prove the spacing itself.
CHANNEL = {"pair_interval_s": 0.05}
KEYS = Keys()


def _user(index: int) -> str:
    return f"2547000{index:05d}"


async def _send_all(edge_url: str, rng: random.Random) -> list[tuple[str, int, int]]:
    refused: list[tuple[str, int, int]] = []

    async def one_user(client: httpx.AsyncClient, index: int) -> None:
        wa_id = _user(index)
        for n in range(MESSAGES):
            await asyncio.sleep(rng.uniform(0.2, 1.6))
            body = encode(message_webhook(wa_id, {"type": "text", "text": {"body": f"m{n}"}}, wamid=f"wamid.{wa_id}.{n}"))
            for attempt in range(5):  # Meta retries a lost request, same wamid (the edge drops repeats)
                try:
                    response = await client.post(f"{edge_url}/whatsapp/wa", content=body,
                                                 headers=signed_headers(body, APP_SECRET))
                    break
                except httpx.TransportError:
                    if attempt == 4:
                        raise
            if response.status_code != 200:
                refused.append((wa_id, n, response.status_code))

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(one_user(client, i) for i in range(USERS)))
    return refused


def _killer(fleet: WorkerFleet, stop: threading.Event, rng: random.Random) -> None:
    deadline = time.monotonic() + 120
    while not stop.wait(rng.uniform(*KILL_EVERY_S)) and time.monotonic() < deadline:
        alive = fleet.alive()
        if alive:
            fleet.kill(rng.choice(alive))
        fleet.start(wait=False)


def _covered(texts: list[str]) -> int:
    return sum(len(text.partition(": ")[2].split("\n\n")) for text in texts)


def test_sigkill_storm_over_whatsapp_answers_every_message_once_and_in_order(
    make_stack: Callable[..., Stack], fake_whatsapp: FakeWhatsApp, tmp_path: Path
) -> None:
    stack = make_stack(start_worker=False, worker=STORM_TUNING,
                       channels={"wa": channel_settings(fake_whatsapp, **CHANNEL)})
    # Meta's "sent" statuses come back, naming each part: a part whose sender was killed
    # mid-request is known by them to have gone.
    fake_whatsapp.status_url, fake_whatsapp.app_secret = f"{stack.url}/whatsapp/wa", APP_SECRET
    stack.sim.state.knobs.reply_latency = LatencyModel.lognormal(0.3, 0.8)
    stack.sim.state.knobs.latency_seed = 18
    wa_channel = {
        "type": "whatsapp", "bot": "demo", "phone_number_id": PHONE_NUMBER_ID,
        "access_token": "${WA_ACCESS_TOKEN}", "app_secret": "${WA_APP_SECRET}", "verify_token": "${WA_VERIFY_TOKEN}",
        "api_base_url": fake_whatsapp.api_base_url, **CHANNEL,
    }
    config = worker_config_like(
        stack.config, tmp_path, redis_url=stack.redis_url, webhook_secret=WEBHOOK_SECRET, bot={"budget": STORM_BUDGET},
        channels={"wa": wa_channel},
        env={"WA_ACCESS_TOKEN": TOKEN, "WA_APP_SECRET": APP_SECRET, "WA_VERIFY_TOKEN": VERIFY_TOKEN},
    )
    rng = random.Random(20261204)
    stop = threading.Event()
    users = [_user(i) for i in range(USERS)]

    def answered() -> int:
        return sum(min(_covered(fake_whatsapp.texts(u)), MESSAGES) for u in users)

    with WorkerFleet(config, tmp_path) as fleet:
        for _ in range(WORKERS):
            fleet.start()
        killer = threading.Thread(target=_killer, args=(fleet, stop, rng), daemon=True)
        killer.start()
        started = time.monotonic()
        try:
            refused = asyncio.run(_send_all(stack.url, rng))
            assert not refused, f"the edge refused messages: {refused[:10]}"
            wait_for(lambda: answered() >= USERS * MESSAGES, timeout=90, interval=0.25,
                     what=f"every WhatsApp message answered (logs in {tmp_path})")
            answered_s = time.monotonic() - started
        finally:
            stop.set()
            killer.join(timeout=60)
        wait_for(lambda: stack.redis.zcard(KEYS.active) == 0, timeout=60, what="no conversation left with work")
        kills = fleet.kills
        (tmp_path / "all-workers.log").write_text(fleet.log_text(), encoding="utf-8")

    sessions = defaultdict(list)
    for session in stack.sim.state.list_sessions():
        sessions[session.remote_id.split(LABEL_SEPARATOR)[0]].append(session)
    wrong_ocs: dict[str, list[list[str]]] = {}
    wrong_replies: dict[str, list[str]] = {}
    for wa_id in users:
        used = [s for s in sessions[f"whatsapp:{wa_id}"] if stack.sim.state.user_messages(s.id)]
        seen = [stack.sim.state.user_messages(s.id) for s in used]
        if len(seen) != 1 or [m for text in seen[0] for m in text.split("\n\n")] != [f"m{n}" for n in range(MESSAGES)]:
            wrong_ocs[wa_id] = seen
            continue
        expected = [f"Echo #{n + 1}: {text}" for n, text in enumerate(seen[0])]
        if fake_whatsapp.texts(wa_id) != expected:
            wrong_replies[wa_id] = fake_whatsapp.texts(wa_id)
    records = len(stack.redis.keys("ocsgw:wa:sent:wa:*"))
    print(f"\nwhatsapp kill storm: {USERS * MESSAGES} messages, {USERS} users, {WORKERS} workers, {kills} SIGKILLs, "
          f"all answered after {answered_s:.1f}s; sends refused by the fake: {fake_whatsapp.refused}; "
          f"delivery records written by their senders: {records} of {len(fake_whatsapp.sent())}")
    assert kills >= 2, f"the storm killed only {kills} worker(s)"
    assert not wrong_ocs, f"OCS did not get m0..m{MESSAGES - 1} once, in order: {dict(list(wrong_ocs.items())[:3])}"
    assert not wrong_replies, f"replies not one per OCS turn, in order: {dict(list(wrong_replies.items())[:3])}"
    assert stack.redis.zcard(KEYS.dlq) == 0

    def unsettled() -> list[str]:
        return [s.wamid for s in fake_whatsapp.sent()
                if stack.redis.get(f"ocsgw:wa:part:wa:{s.body['biz_opaque_callback_data']}") != s.wamid.encode()]

    # Every message Meta took is known by its part, from its sender's record or from its status.
    wait_for(lambda: not unsettled(), timeout=30, what=f"every sent part settled (left: {unsettled()[:3]})")
