"""``ocs-gateway send``: the quickstart's message, signed as any webhook sender signs it, and the
bot's reply as the demo inbox received it."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

import httpx

from gateway.cli.settings import data_dir

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    send = commands.add_parser("send", help="send a signed message to the demo channel and print the reply")
    send.add_argument("text")
    send.add_argument("--conversation", default="quickstart")
    send.add_argument("--url", default="http://127.0.0.1:8000")
    send.add_argument("--timeout", type=float, default=30.0)
    send.set_defaults(func=_send)


def _send(args: argparse.Namespace) -> int:
    """Sign a message like any webhook sender would, then wait for the reply in the demo inbox."""
    from adapters.webhook import signing
    from gateway.cli.demo import DEMO_CHANNEL, demo_secret

    key = signing.decode_secret(demo_secret(data_dir()))
    body = json.dumps(
        {"conversation_id": args.conversation, "sender": {"id": "cli-user", "name": "You"}, "text": args.text}
    ).encode()
    msg_id = f"msg_{uuid.uuid4().hex}"
    headers = signing.signed_headers(key, msg_id, body)
    with httpx.Client(timeout=10) as client:
        response = client.post(f"{args.url}/webhooks/{DEMO_CHANNEL}", content=body, headers=headers)
        print(f"→ sent ({response.status_code}): {args.text}")
        if response.status_code != 200:
            print(response.text, file=sys.stderr)
            return 1
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            replies = client.get(f"{args.url}/demo/replies/{args.conversation}").json()
            mine = [r for r in replies if r.get("in_reply_to") == msg_id and r.get("text")]
            if mine:
                for reply in mine:
                    print(f"← bot: {reply['text']}")
                return 0
            time.sleep(0.3)
    print("no reply yet; is the worker running?", file=sys.stderr)
    return 1
