"""What one API write costs the store, by the size of the instance's service.

    .venv/bin/python bench/write_cost.py [--sizes 1 1000 10000] [--writes 200]

A register, a check update and a deregister of one instance, each committed the way the HTTP
API commits them (without the fsync, which Store.sync adds before the answer), into a service
of N other instances exported to one peer. Medians in milliseconds, back to back, in one
process; no Kafka, no HTTP. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.catalog import ExportedService, ExportedServicesEntry, ServiceConsumer
from agent.model import CheckStatus, HealthCheck, ServiceInstance
from agent.store import Store


def instance(service_id: str, port: int) -> ServiceInstance:
    check = HealthCheck(f"service:{service_id}", "ttl", TTLSeconds=30.0, ServiceID=service_id)
    return ServiceInstance(ID=service_id, Name="big", Port=port, Checks=(check,))


def median_ms(write: Callable[[int], object], count: int) -> float:
    times = []
    for n in range(count):
        started = time.perf_counter()
        write(n)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 3)


def costs(size: int, writes: int) -> tuple[float, float, float]:
    """(register, check update, deregister + register) medians with ``size`` instances."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp))
        try:
            entry = ExportedServicesEntry(
                Kind="exported-services",
                Services=(ExportedService("big", (ServiceConsumer("west"),)),),
            )
            store.set_exported_services(entry)
            store.sync_file_services([instance(f"big-{n}", 1000 + n) for n in range(size)])
            statuses = [CheckStatus.PASSING, CheckStatus.CRITICAL]

            def flap(n: int) -> None:
                store.deregister("x-1", durable=False)
                store.register(instance("x-1", 30000 + n), durable=False)

            return (
                median_ms(lambda n: store.register(instance("x-1", n), durable=False), writes),
                median_ms(
                    lambda n: store.update_check("service:x-1", statuses[n % 2], durable=False),
                    writes,
                ),
                median_ms(flap, writes),
            )
        finally:
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 1000, 10000])
    parser.add_argument("--writes", type=int, default=200)
    args = parser.parse_args()
    print("service size | register | check update | deregister + register (ms, median)")
    for size in args.sizes:
        register, check, churn = costs(size, args.writes)
        print(f"{size:>12,} | {register:>8} | {check:>12} | {churn:>10}")


if __name__ == "__main__":
    main()
