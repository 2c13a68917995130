"""Real ``redis-server`` processes for the failover tests: a primary, its replicas and Sentinels
(``redis-server <conf> --sentinel``), all on loopback with free ports, and a TCP proxy that can
cut the network between a client and a server.

Sentinel rewrites its config file as it learns the group, so each gets a file of its own in the
test's directory.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import redis

from gateway.store.embedded_redis import EmbeddedRedis, find_redis_server
from tests.conftest import wait_for
from tests.support.servers import free_port

__all__ = ["MASTER_NAME", "RedisGroup", "TcpProxy", "paused"]

MASTER_NAME = "mymaster"


class RedisGroup:
    """``with RedisGroup(tmp_path) as group:`` — a primary, ``replicas`` replicas and
    ``sentinels`` Sentinels watching them (quorum 2, a primary down after ``down_after_ms``).

    ``servers`` maps port → server; ``primary_port()`` asks a sentinel who is master now."""

    def __init__(
        self, directory: Path, *, replicas: int = 1, sentinels: int = 3, down_after_ms: int = 1000,
        proxied_replication: bool = False,
    ) -> None:
        """``proxied_replication``: each replica follows the first primary through a ``TcpProxy``
        (``cut_replication`` then stops the stream at the primary's side: what the primary
        writes meanwhile is on no replica — pausing a replica would not do, the kernel buffers
        the stream for it)."""
        self.directory = directory
        self.down_after_ms = down_after_ms
        self.servers: dict[int, EmbeddedRedis] = {}
        # No delay before a full sync (the default waits 5 s for more replicas to join).
        fast_sync = ("--repl-diskless-sync-delay", "0")
        self.first_primary = EmbeddedRedis(directory / "primary", persist=False, extra_args=fast_sync)
        self.servers[self.first_primary.port] = self.first_primary
        self.replication_proxies: list[TcpProxy] = []
        for n in range(replicas):
            port = free_port()
            upstream = self.first_primary.port
            if proxied_replication:
                self.replication_proxies.append(TcpProxy(self.first_primary.port))
                upstream = self.replication_proxies[-1].port
            self.servers[port] = EmbeddedRedis(
                directory / f"replica{n}", port=port, persist=False,
                extra_args=(*fast_sync, "--replicaof", "127.0.0.1", str(upstream)),
            )
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self._sentinels: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def sentinel_addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.sentinel_ports]

    def config(self) -> dict[str, object]:
        """The ``redis_sentinel`` block of a gateway config for this group."""
        return {"master_name": MASTER_NAME, "sentinels": self.sentinel_addresses}

    def start(self) -> RedisGroup:
        for proxy in self.replication_proxies:
            proxy.start()
        self.first_primary.start()
        for server in self.servers.values():
            if server is not self.first_primary:
                server.start()
        self.wait_replicated(len(self.servers) - 1)
        for port in self.sentinel_ports:
            self.start_sentinel(port)
        for port in self.sentinel_ports:
            wait_for(lambda p=port: self._sentinel_knows_all(p), timeout=30, what="the sentinels to find each other and the replicas")
        return self

    def start_sentinel(self, port: int) -> None:
        conf = self.directory / f"sentinel-{port}.conf"
        if not conf.exists():
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.first_primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                # Long: Sentinel "fixes" a replica that follows another address than the master's
                # (the replication proxy) only after this.
                f"sentinel failover-timeout {MASTER_NAME} 120000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
        log = (self.directory / f"sentinel-{port}.log").open("ab")
        self._sentinels[port] = subprocess.Popen(
            [find_redis_server(), str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
        )

    def kill_sentinel(self, port: int) -> None:
        process = self._sentinels.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def _sentinel_knows_all(self, port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
                master = client.execute_command("SENTINEL", "MASTER", MASTER_NAME)
        except redis.RedisError:
            return False
        fields = dict(zip(master[::2], master[1::2], strict=True)) if isinstance(master, list) else master
        return (int(fields.get("num-slaves", 0)) >= len(self.servers) - 1
                and int(fields.get("num-other-sentinels", 0)) >= len(self.sentinel_ports) - 1)

    def primary_port(self) -> int | None:
        """The master's port as a live sentinel sees it."""
        for port in self._sentinels:
            try:
                with redis.Redis(port=port, socket_timeout=1) as client:
                    address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def primary(self) -> EmbeddedRedis:
        port = self.primary_port()
        assert port is not None, "no sentinel names a master"
        return self.servers[port]

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5)

    def wait_replicated(self, count: int, *, timeout: float = 30) -> None:
        def ready() -> bool:
            try:
                with self.client(self.first_primary.port) as client:
                    info = client.info("replication")
            except redis.RedisError:
                return False
            online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                      and v.get("state") == "online"]
            return len(online) >= count

        wait_for(ready, timeout=timeout, what=f"{count} replica(s) online")

    def wait_failover(self, old_port: int, *, timeout: float = 30) -> int:
        """Wait until the sentinels name another master than ``old_port`` and it takes writes."""
        def promoted() -> int | None:
            port = self.primary_port()
            if port is None or port == old_port:
                return None
            try:
                with self.client(port) as client:
                    role = client.execute_command("ROLE")[0]
            except redis.RedisError:
                return None
            return port if role in (b"master", "master") else None

        return int(wait_for(promoted, timeout=timeout, what="Sentinel to promote a replica"))

    def stop(self) -> None:
        for port in list(self._sentinels):
            with suppress(Exception):
                self.kill_sentinel(port)
        for server in self.servers.values():
            server.stop()
        for proxy in self.replication_proxies:
            proxy.stop()

    def cut_replication(self) -> None:
        for proxy in self.replication_proxies:
            proxy.cut()

    def __enter__(self) -> RedisGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TcpProxy:
    """A loopback TCP proxy to ``target_port``; ``cut()`` drops every connection through it and
    refuses new ones (a network cut), ``restore()`` lets connections through again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut = False
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for sock in self._open:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def stop(self) -> None:
        self._stopping = True
        self.cut()
        self._thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if self._cut:
                    client.close()
                    continue
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def paused(server: EmbeddedRedis) -> Iterator[None]:
    """SIGSTOP ``server`` for the block (a replica lagging as far as it can), then SIGCONT."""
    server.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.send_signal(signal.SIGCONT)
