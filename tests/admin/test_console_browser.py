"""The console in a real headless Chromium: an operator logs in with the token through the form,
sees the stuck turn, the dead letter and the worker on the overview, presses Replay, and the
answer that could not be delivered reaches the webhook's callback without a second OCS message.
The page fits a phone's width, and the session cookie is out of the page's scripts' reach.

Set ``OCSGW_SCREENSHOTS=<dir>`` to keep the screenshots (``scripts/screenshot_console`` does,
for docs/console.png and docs/console-phone.png)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.admin.conftest import (
    ADMIN_TOKEN,
    KEYS,
    STUCK_CONVERSATION,
    WORKER_ID,
    make_dead_letter,
    make_stuck_turn,
    make_worker_beat,
    read_traffic_of,
    run,
)
from tests.conftest import Stack, wait_for

PHONE = {"width": 390, "height": 844}


def traffic_ok(stack: Stack) -> int:
    """Requests the edge answered 2xx on channel hooks in the last 5 minutes, as Redis has them."""
    traffic = run(read_traffic_of(stack.redis_url, ["hooks"]))
    return int(traffic["hooks"].last_5m["ok"])


def _shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("OCSGW_SCREENSHOTS") or tmp_path)


def test_an_operator_logs_in_sees_what_is_wrong_and_replays_a_dead_letter(
    browser_context: Any, console: Stack, tmp_path: Path
) -> None:
    for n in range(3):  # some traffic and reply delays for the overview to show
        console.say(f"warm-{n}", "hi")
    wait_for(lambda: len(console.receiver.texts()) == 3, what="three replies")
    letter_id = make_dead_letter(console, conversation="c-dlq", text="hello")
    stuck = make_stuck_turn(console)
    make_worker_beat(console)
    # The edge writes its request counts every few seconds: wait until the overview can show them.
    wait_for(lambda: traffic_ok(console) >= 4, what="the edge's request counts in Redis")

    page = browser_context.new_page()
    page.goto(f"{console.url}/admin/")
    assert page.url.endswith("/admin/login")  # no session yet: the login page, not the console
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{console.url}/admin/")

    turns = page.locator("#turns tr.stuck")
    assert turns.count() == 1
    assert stuck in turns.inner_text() and "stuck" in turns.inner_text()
    assert WORKER_ID in page.locator("#workers").inner_text()
    assert letter_id in page.locator("#dead-letters").inner_text()
    assert "1 turn(s) stuck" in page.locator(".problems").inner_text()
    hooks = page.locator("#channels tr", has_text="/webhooks/hooks").inner_text()
    assert f"{traffic_ok(console)} / 0" in hooks
    assert "is anyone there?" not in page.content()  # the stuck user's text stays off the overview
    shots = _shots(tmp_path)
    page.screenshot(path=str(shots / "console.png"), full_page=True)

    cookie = {c["name"]: c for c in browser_context.cookies()}["ocsgw_admin"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert "ocsgw_admin" not in page.evaluate("document.cookie")

    page.click("#dead-letters a.btn")  # "All dead letters"
    page.wait_for_url(f"{console.url}/admin/dead-letters")
    row = page.locator("tr", has_text=letter_id)
    row.locator("button", has_text="Replay").click()
    page.wait_for_url(f"{console.url}/admin/dead-letters?done=*")
    assert f"replayed {letter_id}" in page.locator(".flash").inner_text()

    assert wait_for(lambda: console.receiver.texts("c-dlq"), what="the replayed answer") == ["Echo #1: hello"]
    sessions = [s for s in console.sim.state.list_sessions() if "hello" in console.sim.state.user_messages(s.id)]
    assert len(sessions) == 1 and console.sim.state.user_messages(sessions[0].id) == ["hello"]  # OCS asked once
    assert not console.redis.exists(KEYS.dead_letter(letter_id))
    assert STUCK_CONVERSATION in stuck


def test_the_overview_fits_a_phone_screen(browser_context: Any, console: Stack, tmp_path: Path) -> None:
    console.say("warm", "hi")
    wait_for(lambda: console.receiver.texts("warm"), what="a reply")
    make_dead_letter(console)
    make_stuck_turn(console)
    make_worker_beat(console)
    page = browser_context.new_page()
    page.set_viewport_size(PHONE)
    page.goto(f"{console.url}/admin/login")
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{console.url}/admin/")
    # Wide tables scroll inside their cards; the page itself never scrolls sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    stuck = page.locator("#turns tr.stuck")
    assert stuck.count() == 1 and stuck.locator("td[data-label=Status]").is_visible()  # not scrolled away
    page.screenshot(path=str(_shots(tmp_path) / "console-phone.png"), full_page=True)
