"""schemas/ stays in step with the msgspec wire Structs."""

from __future__ import annotations

import json
from pathlib import Path

from agent import schemas


def test_schema_files_are_up_to_date() -> None:
    """Every schema in schemas/ equals what the Structs generate (run python -m agent.schemas)."""
    assert schemas.stale_files() == []


def test_every_event_type_is_in_the_event_schema() -> None:
    """The stream event schema names every event tag."""
    doc = json.loads(schemas.render("stream_event"))
    text = json.dumps(doc)
    for tag in (
        "instance_upsert",
        "instance_remove",
        "heartbeat",
        "key_rotation",
        "stream_head",
        "terminated",
        "resync_request",
    ):
        assert tag in text


def test_check_mode_reports_stale_directory(tmp_path: Path) -> None:
    """--check exits 1 for a missing or edited schema and 0 once written."""
    assert schemas.main(["--check", "--out", str(tmp_path)]) == 1
    assert schemas.main(["--out", str(tmp_path)]) == 0
    assert schemas.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "token.json").write_text("{}")
    assert schemas.main(["--check", "--out", str(tmp_path)]) == 1
