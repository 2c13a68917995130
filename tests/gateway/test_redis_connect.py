"""The one Redis client factory (gateway/store/connect.py): TLS with the CA and a client
certificate from ``redis_tls``, ACL users in the URL, Sentinel config checked as it is read, and
nothing secret in what it logs. A real TLS ``redis-server`` (Debian's is built with TLS) and
certificates made by ``openssl`` for the test."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gateway.core.errors import ConfigError
from gateway.store.connect import async_redis, describe_redis, sync_redis
from gateway.store.embedded_redis import find_redis_server
from tests.conftest import stack_config
from tests.support.servers import free_port

NOWHERE = "http://127.0.0.1:9"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A redis-server that speaks only TLS and requires a client certificate signed by its CA."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=tmp_path)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=tmp_path)
        (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "1", "-extfile", "san.ext", "-out", f"{name}.crt", cwd=tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [find_redis_server(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--tls-cert-file", "server.crt", "--tls-key-file",
         "server.key", "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "yes"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        probe = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(tmp_path / "ca.crt"),
                            ssl_certfile=str(tmp_path / "client.crt"), ssl_keyfile=str(tmp_path / "client.key"),
                            socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        while True:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                if server.poll() is not None:
                    output = server.stdout.read().decode() if server.stdout else ""
                    raise AssertionError(f"redis-server refused TLS (it needs one built with TLS, like Debian's "
                                         f"redis-server, which scripts/ensure_test_tools installs): {output[-300:]}") from None
                assert time.monotonic() < deadline, "the TLS redis-server did not start"
                time.sleep(0.05)
        probe.close()
        yield f"rediss://127.0.0.1:{port}/0", tmp_path
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_rediss_with_the_ca_and_a_client_certificate_connects(tls_redis: tuple[str, Path]) -> None:
    url, certs = tls_redis
    config = stack_config(NOWHERE, NOWHERE, redis_tls={
        "ca_file": str(certs / "ca.crt"), "cert_file": str(certs / "client.crt"), "key_file": str(certs / "client.key"),
    })
    client = async_redis(config, url)
    try:
        assert await client.set("k", "v") and await client.get("k") == b"v"
    finally:
        await client.aclose()
    with sync_redis(config, url) as blocking:  # Dramatiq's broker is built this way
        assert blocking.get("k") == b"v"


async def test_rediss_without_the_client_certificate_is_refused(tls_redis: tuple[str, Path]) -> None:
    url, certs = tls_redis
    client = async_redis(stack_config(NOWHERE, NOWHERE, redis_tls={"ca_file": str(certs / "ca.crt")}), url,
                         socket_connect_timeout=2, socket_timeout=2)
    try:
        with pytest.raises(redis.RedisError):
            await client.ping()
    finally:
        await client.aclose()


async def test_an_acl_user_in_the_url_is_used(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.acl_setuser("gw", enabled=True, passwords=["+pw"], keys=["ocsgw:*"], commands=["+@all"])
    try:
        scheme, rest = redis_url.split("://", 1)
        client = async_redis(stack_config(NOWHERE, NOWHERE), f"{scheme}://gw:pw@{rest}")
        try:
            assert await client.acl_whoami() == "gw"
            with pytest.raises(redis.exceptions.NoPermissionError):
                await client.set("elsewhere", "1")
        finally:
            await client.aclose()
    finally:
        redis_client.acl_deluser("gw")


def test_the_description_in_logs_names_no_password() -> None:
    config = stack_config(NOWHERE, NOWHERE)
    assert describe_redis(config, "rediss://gw:hunter2@cache.example:6380/0") == "rediss://cache.example:6380/0"
    sentinel = stack_config(NOWHERE, NOWHERE, redis_sentinel={"master_name": "mymaster", "sentinels": ["10.0.0.1:26379"]})
    assert describe_redis(sentinel, None) == "Sentinel master 'mymaster' via 10.0.0.1:26379"


@pytest.mark.parametrize(("override", "message"), [
    ({"redis_sentinel": {"master_name": "m", "sentinels": ["10.0.0.1"]}}, "write host:port"),
    ({"redis_sentinel": {"master_name": "m", "sentinels": []}}, "at least 1"),
    ({"redis_sentinel": {"master_name": "m", "sentinels": ["h:1"], "password": "plain"}}, r"\$\{MY_SECRET\}"),
    ({"redis_tls": {"cert_file": "c.pem"}}, "cert_file and key_file go together"),
    ({"durable_replicas": -1}, "greater than or equal to 0"),
])
def test_bad_redis_settings_are_refused_as_they_are_read(override: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        stack_config(NOWHERE, NOWHERE, **override)
