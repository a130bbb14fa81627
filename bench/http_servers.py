"""One request's round trip through each ASGI server, after the same pause as a change's.

    .venv/bin/python bench/http_servers.py [--samples 1000] [--pause-ms 20]
    .venv/bin/pip install granian==2.8.7   # to compare with it (not a dependency)

Why: what is left of propagation's ratio to the floor is mostly Python on the path, and an
HTTP exchange at each end of it (bench/skeleton.py). A server with less Python per request
was the one lever of that kind left untried. Each server runs in its own process and serves
the same ASGI app (an answer of a few bytes, the PUT's body read first), on uvloop as in the
agent; granian, a Rust server, runs embedded on the process' loop as uvicorn does in the
agent. The client is bench/lean_http.py; requests alternate between the servers, each after
the pause, so both see the machine in the same state. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import lean_http  # bench/ is on sys.path when a script here runs
from agents import wait_until_serving
from latency import summary

from agent.devbroker import free_port
from agent.processes import stop_process

BODY = b'[{"Service":{"ID":"bench-1","Port":8080}}]'
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The smallest ASGI app that answers like the register: read the body, answer 200."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["method"] == "PUT":
        await receive()
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


async def serve(server: str, port: int) -> None:
    if server == "uvicorn":
        import uvicorn

        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, loop="none", http="httptools",
            lifespan="off", access_log=False, log_level="warning",
        )  # fmt: skip
        await uvicorn.Server(config).serve()
    else:
        from granian.constants import Interfaces
        from granian.server.embed import Server

        await Server(
            app, address="127.0.0.1", port=port, interface=Interfaces.ASGI, log_enabled=False
        ).serve()


async def measure(ports: dict[str, int], samples: int, pause: float) -> dict[str, list[float]]:
    client = lean_http.LeanHttp()
    requests = {
        name: lean_http.prepare(
            "PUT", f"http://127.0.0.1:{port}/v1/agent/service/register", b'{"Name":"bench"}'
        )
        for name, port in ports.items()
    }
    times: dict[str, list[float]] = {name: [] for name in ports}
    try:
        for sample in range(samples + samples // 5):
            for name, request in requests.items():
                await asyncio.sleep(pause)
                started = time.perf_counter()
                answer = await client.send(request)
                took = time.perf_counter() - started
                if answer.status != 200:
                    raise RuntimeError(f"{name} answered {answer.status}")
                if sample >= samples // 5:  # the first fifth warms up
                    times[name].append(took)
    finally:
        await client.aclose()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--pause-ms", type=float, default=20.0)
    parser.add_argument("--serve", choices=["uvicorn", "granian"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(serve(args.serve, args.port))
        return
    servers = ["uvicorn"]
    if importlib.util.find_spec("granian") is not None:
        servers.append("granian")
    else:
        print("granian is not installed (pip install granian): measuring uvicorn alone")
    ports = {name: free_port() for name in servers}
    procs = [
        subprocess.Popen([sys.executable, __file__, "--serve", name, "--port", str(port)])
        for name, port in ports.items()
    ]
    try:
        for name, port in ports.items():
            wait_until_serving(f"http://127.0.0.1:{port}", name)  # any GET answers 200
        times = asyncio.run(measure(ports, args.samples, args.pause_ms / 1000))
    finally:
        for proc in procs:
            stop_process(proc, 10)
    for name, values in times.items():
        figures = summary(values)
        print(
            f"{name:8} p50 {figures['p50_ms']:.3f} ms  p99 {figures['p99_ms']:.3f} ms"
            f"  (mean {statistics.fmean(values) * 1000:.3f} ms, n={len(values)})"
        )


if __name__ == "__main__":
    main()
