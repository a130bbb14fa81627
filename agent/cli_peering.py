"""CLI verbs registered on the ``peering`` app (see agent.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
