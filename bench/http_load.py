"""HTTP API load, measured with wrk from a second process.

    .venv/bin/python bench/http_load.py [--seconds 10] [--connections 16]

Starts one agent (its own data dir; a dev broker for its Kafka), registers 100 instances of
`web`, then runs wrk (Debian package `wrk`) against:
- PUT /v1/agent/service/register (a Lua script sends a new instance id per request);
- GET /v1/health/service/web (100 instances, one TTL check each).
Prints requests/s and the latency percentiles wrk reports. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from agents import Agent  # bench/ is on sys.path when a script here runs

from agent.devbroker import DevBroker

REPO = Path(__file__).resolve().parents[1]

REGISTER_LUA = """
local counter = 0
request = function()
  counter = counter + 1
  local id = string.format("load-%d-%d", math.random(1, 1000000000), counter)
  local body = '{"ID":"' .. id .. '","Name":"load","Address":"10.0.0.1","Port":8080}'
  local headers = {["Content-Type"]="application/json"}
  return wrk.format("PUT", "/v1/agent/service/register", headers, body)
end
"""


def run_wrk(url: str, seconds: int, connections: int, script: Path | None = None) -> str:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def summarise(title: str, output: str) -> None:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    print(f"{title}: {rate.group(1) if rate else '?'} requests/s")
    for quantile in ("50%", "90%", "99%"):
        found = re.search(rf"^\s+{re.escape(quantile)}\s+(\S+)", output, re.MULTILINE)
        print(f"  latency p{quantile[:-1]}: {found.group(1) if found else '?'}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        print(f"  non-2xx responses: {errors.group(1)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = DevBroker(work / "broker")
        broker.start()
        broker.wait_ready()
        agent = Agent("load", broker.bootstrap, work)
        url = agent.url
        try:
            with httpx.Client(base_url=url, timeout=10) as client:
                for i in range(100):
                    client.put(
                        "/v1/agent/service/register",
                        json={"ID": f"web-{i}", "Name": "web", "Port": 8000 + i,
                              "Check": {"TTL": "600s", "Status": "passing"}},
                    ).raise_for_status()  # fmt: skip
            script = work / "register.lua"
            script.write_text(REGISTER_LUA)
            summarise(
                "PUT /v1/agent/service/register",
                run_wrk(url, args.seconds, args.connections, script),
            )
            summarise(
                "GET /v1/health/service/web (100 instances)",
                run_wrk(f"{url}/v1/health/service/web", args.seconds, args.connections),
            )
        finally:
            agent.stop()
            broker.stop()


if __name__ == "__main__":
    main()
