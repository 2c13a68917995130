"""CPU per HTTP request of the client under the OCS client: httpx's own transport against httpx
on ``gateway.core.aiohttp_transport`` (what ``Services`` uses), and, where they are importable,
the ``httpx-aiohttp`` package's transport, ``httpx2`` and aiohttp alone, in the same run.

The server is a minimal HTTP/1.1 keep-alive responder in its own process (so only the client's CPU
is counted), answering a poll-sized JSON body after ``--delay-ms``. Each client makes
``--requests`` POSTs with a JSON body at ``--concurrency`` at once and decodes each answer, like
the OCS client's message and poll calls. CPU is this process's ``time.process_time``; every
variant runs once per round, in turn, and the summary gives each one's CPU per request over
httpx's in the same round (median of the rounds, with the range).

    python -m bench.bench_http                          # about a minute
    python -m bench.bench_http --rounds 5 --requests 4000 --delay-ms 50

Prints a table and a JSON summary; docs/PERFORMANCE.md records the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.core.aiohttp_transport import AiohttpTransport

__all__ = ["main"]

BODY = json.dumps({"status": "complete", "message": {"content": "x" * 300, "role": "ai"}, "error": None}).encode()
LIMITS = httpx.Limits(max_connections=40, max_keepalive_connections=40)


def _serve(sock: socket.socket, delay_s: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
        )
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in request.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if delay_s:
                    await asyncio.sleep(delay_s)
                writer.write(head)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def run() -> None:
        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


Send = Callable[[str], Awaitable[Any]]


async def _drive(send: Send, url: str, requests: int, concurrency: int) -> float:
    """CPU seconds per request."""
    for _ in range(concurrency):  # warm the pool
        await send(url)
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await send(url)

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - cpu) / requests


PAYLOAD = {"message": "hello there", "attachments": []}


async def _httpx_variant(client: httpx.AsyncClient, url: str, requests: int, concurrency: int) -> float:
    async def send(u: str) -> Any:
        response = await client.post(u, json=PAYLOAD)
        return response.json()

    async with client:
        return await _drive(send, url, requests, concurrency)


async def _aiohttp_variant(url: str, requests: int, concurrency: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=40)) as session:
        async def send(u: str) -> Any:
            async with session.post(u, json=PAYLOAD) as response:
                return await response.json()

        return await _drive(send, url, requests, concurrency)


def _variants() -> dict[str, Callable[[str, int, int], Coroutine[Any, Any, float]]]:
    timeout = httpx.Timeout(30.0, connect=10.0)
    found: dict[str, Callable[[str, int, int], Coroutine[Any, Any, float]]] = {
        "httpx": lambda u, n, c: _httpx_variant(httpx.AsyncClient(timeout=timeout, limits=LIMITS), u, n, c),
        "httpx+ours": lambda u, n, c: _httpx_variant(
            httpx.AsyncClient(timeout=timeout, transport=AiohttpTransport(limits=LIMITS)), u, n, c
        ),
    }
    try:
        import httpx_aiohttp  # type: ignore[import-not-found]

        found["httpx+httpx_aiohttp"] = lambda u, n, c: _httpx_variant(
            httpx.AsyncClient(timeout=timeout, transport=httpx_aiohttp.AiohttpTransport(limits=LIMITS)), u, n, c
        )
    except ImportError:
        pass
    try:
        import httpx2  # type: ignore[import-not-found]

        async def with_httpx2(u: str, n: int, c: int) -> float:
            async with httpx2.AsyncClient(timeout=30.0, limits=httpx2.Limits(max_connections=40, max_keepalive_connections=40)) as client:
                async def send(url: str) -> Any:
                    response = await client.post(url, json=PAYLOAD)
                    return response.json()

                return await _drive(send, u, n, c)

        found["httpx2"] = with_httpx2
    except ImportError:
        pass
    found["aiohttp"] = _aiohttp_variant
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/api/chat/x/poll/"
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(sock, args.delay_ms / 1000), daemon=True)
    server.start()
    sock.close()
    variants = _variants()
    per_round: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for _ in range(args.rounds):
            for name, run in variants.items():
                per_round[name].append(asyncio.run(run(url, args.requests, args.concurrency)))
    finally:
        server.terminate()
    print(f"{'client':24} {'CPU ms/request (median)':>24} {'÷ httpx (median, range)':>28}")
    summary: dict[str, Any] = {"concurrency": args.concurrency, "delay_ms": args.delay_ms, "requests": args.requests, "clients": {}}
    for name, values in per_round.items():
        ratios = [v / base for v, base in zip(values, per_round["httpx"], strict=True)]
        print(f"{name:24} {statistics.median(values) * 1000:24.3f} "
              f"{statistics.median(ratios):16.2f} ({min(ratios):.2f}–{max(ratios):.2f})")
        summary["clients"][name] = {"cpu_ms_per_request": round(statistics.median(values) * 1000, 3),
                                    "ratio": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
