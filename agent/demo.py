"""``peering demo``: a guided run on this machine with a real local Kafka.

For now it starts a broker and shows a record going through it; the peering demo grows here.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import anyio
from rich.console import Console

from agent import kafka_client
from agent.devbroker import DevBroker, DevBrokerError


async def _round_trip(bootstrap: str, console: Console) -> None:
    topic = f"demo-{int(time.time())}"
    await kafka_client.create_topic(bootstrap, topic, compacted=True)
    config = await kafka_client.topic_config(bootstrap, topic)
    console.print(f"created topic [bold]{topic}[/] (cleanup.policy={config['cleanup.policy']})")
    async with kafka_client.producer(bootstrap) as producer:
        offset = await kafka_client.send(producer, topic, b"hello", b"a record through Kafka")
    console.print(f"produced key=hello at offset {offset} (acks=all)")
    async for record in kafka_client.read_partition(bootstrap, topic):
        value = (record.value or b"").decode()
        console.print(f"consumed offset {record.offset}: key={record.key!r} value={value!r}")


def run_demo(*, keep: bool = False, data_dir: Path | None = None) -> int:
    console = Console()
    work = data_dir or Path(tempfile.mkdtemp(prefix="peering-demo-"))
    broker: DevBroker | None = None
    try:
        console.rule("Peering Agent demo")
        broker = DevBroker(work / "broker")
        console.print(f"starting Apache Kafka {broker.version} (KRaft) on {broker.bootstrap} ...")
        broker.start()
        seconds = broker.wait_ready()
        console.print(f"[green]kafka ready[/] in {seconds:.1f}s")
        anyio.run(_round_trip, broker.bootstrap, console)
        if keep:
            console.print(f"--keep: broker left running (pid {broker.pid}, data {work})")
            broker = None
        console.print("[green]demo finished[/]")
        return 0
    except (DevBrokerError, OSError) as error:
        console.print(f"[red]demo failed:[/] {error}")
        return 1
    finally:
        if broker is not None:
            broker.stop()
            if data_dir is None:
                shutil.rmtree(work, ignore_errors=True)
