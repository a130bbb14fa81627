"""JSON Schema for every wire and file type, generated from the msgspec Structs (the single source).

``python -m agent.schemas`` rewrites ``schemas/*.json``; ``--check`` exits 1 when the files
are stale (tests/test_schemas.py does the same). Byte fields show as base64 strings: that is
their JSON form (token, bootstrap topic); in MessagePack records they are raw bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

from agent.config import AgentConfig
from agent.replay import DumpHeader, KeyFile, RawRecord
from agent.wire.envelope import Envelope
from agent.wire.events import Event
from agent.wire.handshake import (
    BootstrapMessage,
    HandshakeRequest,
    HandshakeResponse,
)
from agent.wire.token import PeeringToken

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"

# file stem -> (type, what it is and how it travels)
WIRE_TYPES: dict[str, tuple[Any, str]] = {
    "token": (
        PeeringToken,
        "Peering token content: text form is 'pat1.' + base64url(JSON) + '.' + checksum.",
    ),
    "bootstrap_message": (
        BootstrapMessage,
        "Record value on the acceptor's bootstrap topic (JSON): a sealed request or response.",
    ),
    "handshake_request": (
        HandshakeRequest,
        "Plaintext of a sealed establish request (JSON, ChaCha20-Poly1305 encrypted).",
    ),
    "handshake_response": (
        HandshakeResponse,
        "Plaintext of a sealed handshake response (JSON, ChaCha20-Poly1305 encrypted).",
    ),
    "stream_envelope": (
        Envelope,
        "Record value on a stream topic (MessagePack); the record key is a 16-byte keyed hash.",
    ),
    "stream_event": (
        Event,
        "Plaintext of a stream envelope (MessagePack): a tagged union on 'Type'.",
    ),
    "dump_header": (
        DumpHeader,
        "First line of a `peering dump` file (JSON lines): format, topic, peering, direction.",
    ),
    "dump_record": (
        RawRecord,
        "Every further line of a `peering dump` file: one raw Kafka record, bytes as base64.",
    ),
    "key_file": (
        KeyFile,
        "`peering export-keys` output: a peering's stream keys for offline replay (secret).",
    ),
    "agent_config": (
        AgentConfig,
        "The agent's TOML config file (`peering agent --config`), one key per field.",
    ),
}


def render(stem: str) -> str:
    """The schema file content for one wire type (stable: sorted keys, trailing newline)."""
    wire_type, description = WIRE_TYPES[stem]
    schema = msgspec.json.schema(wire_type)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = stem
    schema["description"] = description
    return (
        msgspec.json.format(msgspec.json.encode(schema, order="sorted"), indent=2).decode() + "\n"
    )


def stale_files(directory: Path = SCHEMA_DIR) -> list[str]:
    """Schema files that are missing or differ from the Structs."""
    return [
        stem
        for stem in WIRE_TYPES
        if not (directory / f"{stem}.json").exists()
        or (directory / f"{stem}.json").read_text() != render(stem)
    ]


def write_all(directory: Path = SCHEMA_DIR) -> None:
    """(Re)write every schema file."""
    directory.mkdir(parents=True, exist_ok=True)
    for stem in WIRE_TYPES:
        (directory / f"{stem}.json").write_text(render(stem))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if schemas/ is stale")
    parser.add_argument("--out", type=Path, default=SCHEMA_DIR)
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out)
        if stale:
            print(
                f"stale schemas: {', '.join(stale)}; run python -m agent.schemas", file=sys.stderr
            )
            return 1
        return 0
    write_all(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
