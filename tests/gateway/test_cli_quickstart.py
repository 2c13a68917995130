"""The operator commands answer from a running quickstart: with ``ocs-gateway run`` serving the
demo (its own redis-server, no gateway.yaml), ``status``, ``dlq`` and ``budget`` given no
configuration use its Redis and its demo configuration; with no quickstart running (or one that
died), they say both ways to give them one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from gateway import cli
from gateway.cli.quickstart import STATE_FILE
from tests.conftest import wait_for
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
#: What would make the commands find something other than the quickstart, or change its channels.
_UNSET = ("OCS_GATEWAY_CONFIG", "OCS_GATEWAY_DATA", "REDIS_URL", "TELEGRAM_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_BOT_TOKEN")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with no gateway.yaml, where the commands run as a new user runs them."""
    monkeypatch.chdir(tmp_path)
    for name in _UNSET:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def quickstart(workdir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``ocs-gateway run`` with nothing configured, as ./scripts/run starts it, from ``workdir``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in _UNSET} | {"PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "--port", str(port)],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    state = workdir / ".ocs-gateway" / STATE_FILE
    embedded_url: str | None = None
    try:
        wait_for(lambda: process.poll() is not None or _ready(url), timeout=60, what="the quickstart to serve")
        assert process.poll() is None, "the quickstart exited"
        embedded_url = json.loads(state.read_text())["redis_url"] if state.exists() else None
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if embedded_url is not None:  # a quickstart that failed to stop its redis-server leaves it to us
            leftover = redis.Redis.from_url(embedded_url, socket_connect_timeout=2)
            with contextlib.suppress(redis.ConnectionError):
                leftover.shutdown(nosave=True)
            leftover.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_status_dlq_and_budget_answer_from_the_running_quickstart(
    quickstart: tuple[str, subprocess.Popen[bytes]], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, process = quickstart
    announced = json.loads((workdir / ".ocs-gateway" / STATE_FILE).read_text())
    assert announced["pid"] == process.pid and announced["base_url"] == url
    embedded = redis.Redis.from_url(announced["redis_url"], socket_connect_timeout=2)
    assert embedded.ping()  # the redis-server the quickstart started, on a port of its choosing
    # A message the whole way, so the quickstart's Redis has traffic and OCS bookings to show.
    assert cli.main(["send", "Hello, bot!", "--url", url]) == 0
    assert "← bot: Echo #1: Hello, bot!" in capsys.readouterr().out

    def summary() -> dict[str, object] | None:
        code = cli.main(["status", "--json", "--no-platforms"])
        printed = json.loads(capsys.readouterr().out)
        return printed if code == 0 else None  # 0 once the quickstart's worker has beaten

    status = wait_for(summary, timeout=30, what="status to see the quickstart's worker alive")
    (channel,) = status["channels"]  # type: ignore[index]
    assert channel["name"] == "demo" and channel["path"] == "/webhooks/demo"
    assert status["workers"] and status["dead_letters_total"] == 0  # type: ignore[index]

    assert cli.main(["dlq", "list"]) == 0
    assert cli.main(["dlq", "count"]) == 0
    assert capsys.readouterr().out == ""  # no letters: nothing listed, nothing counted
    assert cli.main(["budget"]) == 0
    budget = capsys.readouterr().out
    assert "used / limit" in budget and "127.0.0.1" in budget  # the simulator's origin, booked by the send

    # A clean stop (SIGTERM, as kill, systemd and docker send it) stops its redis-server and takes
    # the announcement with it: the commands no longer find a quickstart.
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == -signal.SIGTERM  # it still ends by the signal, as uvicorn does
    with pytest.raises(redis.ConnectionError):
        embedded.ping()
    embedded.close()
    assert not (workdir / ".ocs-gateway" / STATE_FILE).exists()
    assert cli.main(["status"]) == 2
    refused = capsys.readouterr().err
    assert "gateway.yaml" in refused and "OCS_GATEWAY_CONFIG" in refused and "./scripts/run" in refused


def test_without_a_config_or_a_quickstart_the_commands_say_both_ways(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["status"], ["dlq", "list"], ["budget"]):
        assert cli.main(command) == 2
        refused = capsys.readouterr().err
        assert "no configuration" in refused and "gateway.yaml" in refused and "./scripts/run" in refused


def test_a_quickstart_that_died_is_not_taken_for_a_running_one(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    data = workdir / ".ocs-gateway"
    data.mkdir()
    # As a killed quickstart leaves it: its Redis went with it.
    (data / STATE_FILE).write_text(json.dumps(
        {"pid": gone.pid, "base_url": "http://127.0.0.1:8000", "redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    ))
    assert cli.main(["budget"]) == 2
    refused = capsys.readouterr().err
    assert "no longer running" in refused and str(gone.pid) in refused and "./scripts/run" in refused
