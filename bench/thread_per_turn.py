"""The baseline design for bench_turns.py: a Dramatiq actor that does a whole turn while holding
its worker thread (start a session, send, sleep-poll the task, post the callback), as a gateway
built on plain blocking actors would. Run as a process:

    python bench/thread_per_turn.py REDIS_URL SIM_URL CALLBACK_URL WHSEC_SECRET
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import dramatiq
import httpx
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.webhook import signing
from gateway.ocs.simulator import DEMO_CHATBOT_ID

QUEUE = "baseline"
ACTOR = "naive_turn"
NAMESPACE = "bench-baseline"


def enqueue_turn(redis_url: str, conversation: str) -> None:
    broker = RedisBroker(url=redis_url, namespace=NAMESPACE)
    broker.enqueue(Message(queue_name=QUEUE, actor_name=ACTOR, args=(conversation,), kwargs={}, options={}))
    broker.close()


def main(redis_url: str, sim_url: str, callback_url: str, secret: str) -> None:
    broker = RedisBroker(url=redis_url, namespace=NAMESPACE)
    key = signing.decode_secret(secret)
    http = httpx.Client(timeout=30, headers={"User-Agent": "bench-baseline"})
    token = http.post(
        f"{sim_url}/o/token/",
        data={"grant_type": "client_credentials", "client_id": "demo-client", "client_secret": "demo-secret", "scope": "chat:start"},
    ).json()["access_token"]

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name=ACTOR, max_retries=0)
    def naive_turn(conversation: str) -> None:
        start = http.post(
            f"{sim_url}/api/chat/start/",
            headers={"Authorization": f"Bearer {token}"},
            json={"chatbot_id": DEMO_CHATBOT_ID, "participant_remote_id": conversation},
        ).json()
        session = {"X-Session-Token": start["session_token"]}
        sid = start["session_id"]
        task = http.post(f"{sim_url}/api/chat/{sid}/message/", headers=session, json={"message": f"hello from {conversation}"}).json()
        wait = 1.0
        while True:
            time.sleep(wait)  # the thread is held for the whole wait
            result = http.get(f"{sim_url}/api/chat/{sid}/{task['task_id']}/poll/", headers=session).json()
            if result["status"] != "processing":
                break
            wait = min(wait * 1.5, 5.0)
        body = json.dumps({"conversation_id": conversation, "text": result["message"]["content"]}).encode()
        stamp = int(time.time())
        msg_id = f"msg_{conversation}"
        http.post(callback_url, content=body, headers={
            "webhook-id": msg_id, "webhook-timestamp": str(stamp), "webhook-signature": signing.sign(key, msg_id, stamp, body),
        })

    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=8)
    worker.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    worker.stop()


if __name__ == "__main__":
    main(*sys.argv[1:5])
