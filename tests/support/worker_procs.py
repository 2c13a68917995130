"""Worker processes for tests that kill them: a YAML config for the test stack (the ``sim``
simulator and a ``CallbackReceiver``), and ``ocs-gateway worker`` subprocesses that can be
SIGKILLed, replaced, and started with a skewed wall clock.

A skew is injected before anything is imported (``time.time`` is replaced at interpreter start),
so every module of the worker reads the skewed clock, as on a host whose clock is off. Each
worker's stdout and stderr go to a log file of its own, which is also how readiness is seen
(``WorkerProcess.start`` logs "worker started").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adapters.webhook.config import WebhookChannelConfig
from gateway.core.config import GatewayConfig
from gateway.ocs.simulator import DEMO_CHATBOT_ID

__all__ = ["WorkerConfig", "WorkerFleet", "WorkerProc", "worker_config_like", "write_worker_config"]

_REPO = Path(__file__).resolve().parents[2]
#: The line ``WorkerProcess.start`` logs once its runner and Dramatiq threads run.
_READY_MARK = "worker started:"
#: Written first thing by the launcher: the worker's (possibly skewed) ``time.time()``.
_CLOCK_MARK = "ocsgw-test-clock "
#: Environment variables the config's ``${...}`` secret references name.
_CLIENT_SECRET_ENV = "OCSGW_TEST_CLIENT_SECRET"
_WEBHOOK_SECRET_ENV = "OCSGW_TEST_WEBHOOK_SECRET"

# Patch the clock before any import so that module-level ``from time import time`` sees it too.
_LAUNCHER = """\
import sys, time
_real_time = time.time
time.time = lambda: _real_time() + {skew!r}
sys.stderr.write({mark!r} + repr(time.time()) + "\\n")
sys.stderr.flush()
from gateway.cli import main
sys.exit(main({argv!r}))
"""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """A written config file and the environment its secret references need."""

    path: Path
    env: Mapping[str, str]


def write_worker_config(
    directory: Path,
    *,
    redis_url: str,
    sim_url: str,
    callback_url: str,
    webhook_secret: str,
    tuning: Mapping[str, Any],
    client_id: str = "demo-client",
    client_secret: str = "demo-secret",
    task_timeout_s: float = 20.0,
    bot: Mapping[str, Any] | None = None,
    channels: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> WorkerConfig:
    """Write ``gateway.yaml`` in ``directory``: bot ``demo`` on the simulator and webhook channel
    ``hooks`` calling back ``callback_url``, the same shape as ``tests.conftest.stack_config``.
    ``bot`` adds or replaces fields of the bot (``budget``, say); ``channels`` adds channels
    (their secrets as ``${ENV}`` references whose values ``env`` holds). Secrets go in as
    ``${ENV}`` references, their values in the returned ``env``."""
    data: dict[str, Any] = {
        "redis_url": redis_url,
        "bots": {
            "demo": {
                "base_url": sim_url,
                "chatbot_id": DEMO_CHATBOT_ID,
                "auth": "oauth",
                "client_id": client_id,
                "client_secret": f"${{{_CLIENT_SECRET_ENV}}}",
                "task_timeout_s": task_timeout_s,
                **(bot or {}),
            }
        },
        "channels": {
            "hooks": {
                "type": "webhook",
                "bot": "demo",
                "secret": f"${{{_WEBHOOK_SECRET_ENV}}}",
                "callback_url": callback_url,
            },
            **(channels or {}),
        },
        "worker": dict(tuning),
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return WorkerConfig(path, {_CLIENT_SECRET_ENV: client_secret, _WEBHOOK_SECRET_ENV: webhook_secret, **(env or {})})


def worker_config_like(
    config: GatewayConfig,
    directory: Path,
    *,
    redis_url: str,
    webhook_secret: str,
    bot: Mapping[str, Any] | None = None,
    channels: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> WorkerConfig:
    """``write_worker_config`` for the stack whose config is ``config`` (a ``make_stack``
    config): the same simulator, callback URL and worker tuning."""
    hooks = config.channels["hooks"]
    if not isinstance(hooks, WebhookChannelConfig):
        raise TypeError("channel 'hooks' is not a webhook channel")
    return write_worker_config(
        directory,
        redis_url=redis_url,
        sim_url=config.bots["demo"].base_url,
        callback_url=hooks.callback_url,
        webhook_secret=webhook_secret,
        tuning=config.worker.model_dump(),
        bot=bot,
        channels=channels,
        env=env,
    )


@dataclass
class WorkerProc:
    """One ``ocs-gateway worker`` subprocess."""

    name: str
    skew_s: float
    popen: subprocess.Popen[bytes]
    log_path: Path
    #: This process's own ``time.time()`` just before the launch (for ``observed_skew_s``).
    launched_at: float
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def ready(self) -> bool:
        return _READY_MARK in self.log()

    def observed_skew_s(self) -> float | None:
        """The worker's clock minus ours at its start (interpreter start-up included, a few
        hundredths of a second); None until the launcher has written it."""
        for line in self.log().splitlines():
            if line.startswith(_CLOCK_MARK):
                return float(line[len(_CLOCK_MARK) :]) - self.launched_at
        return None


@dataclass
class WorkerFleet:
    """Starts, kills and stops worker subprocesses; safe to drive from several threads (a
    killer thread and the test). Use as a context manager so that none outlives the test.

    Parameters:
        config: the config every worker loads.
        log_dir: where each worker's log file goes (``<name>.log``).
        log_level: the workers' ``LOG_LEVEL``.
    """

    config: WorkerConfig
    log_dir: Path
    log_level: str = "INFO"
    procs: list[WorkerProc] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, *, skew_s: float = 0.0, wait: bool = True, timeout: float = 60.0) -> WorkerProc:
        """Launch a worker whose ``time.time()`` runs ``skew_s`` ahead (negative: behind);
        with ``wait``, return once it logged that it started.

        Raises:
            RuntimeError: it exited, or did not start within ``timeout`` (its log is in the message).
        """
        with self._lock:
            name = f"worker{len(self.procs) + 1}"
            log_path = self.log_dir / f"{name}.log"
            argv = ["--config", str(self.config.path), "worker"]
            code = _LAUNCHER.format(skew=float(skew_s), mark=_CLOCK_MARK, argv=argv)
            env = {**os.environ, **self.config.env, "LOG_LEVEL": self.log_level, "PYTHONUNBUFFERED": "1"}
            launched_at = time.time()
            with log_path.open("wb") as log_file:
                popen = subprocess.Popen(
                    [sys.executable, "-c", code], cwd=_REPO, env=env,
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                )  # fmt: skip
            proc = WorkerProc(name, float(skew_s), popen, log_path, launched_at)
            self.procs.append(proc)
        if wait:
            self.wait_ready(proc, timeout=timeout)
        return proc

    def wait_ready(self, proc: WorkerProc, *, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not proc.ready():
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} did not start within {timeout}s:\n{proc.log()[-4000:]}")
            time.sleep(0.05)

    def kill(self, proc: WorkerProc) -> None:
        """SIGKILL: no hand-back, no lease release; its conversations wait for the lease TTL."""
        with self._lock:
            if proc.alive():
                os.kill(proc.pid, signal.SIGKILL)
                proc.killed = True
        proc.popen.wait(timeout=30)

    def alive(self) -> list[WorkerProc]:
        with self._lock:
            return [p for p in self.procs if p.alive()]

    @property
    def kills(self) -> int:
        with self._lock:
            return sum(1 for p in self.procs if p.killed)

    def stop(self, *, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every live worker (a graceful stop), SIGKILL any still running after
        ``timeout``; the exit code of each worker stopped here, by name."""
        with self._lock:
            running = [p for p in self.procs if p.alive()]
            for proc in running:
                proc.popen.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                codes[proc.name] = proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.kill(proc)
                codes[proc.name] = None
        return codes

    def log_text(self) -> str:
        """Every worker's log, each under a header with its name, skew and fate."""
        with self._lock:
            procs = list(self.procs)
        return "\n".join(
            f"===== {p.name} pid={p.pid} skew={p.skew_s:+.1f}s{' SIGKILLed' if p.killed else ''}\n{p.log()}"
            for p in procs
        )

    def count_in_logs(self, needle: str) -> int:
        with self._lock:
            procs = list(self.procs)
        return sum(p.log().count(needle) for p in procs)

    def __enter__(self) -> WorkerFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(timeout=10.0)
