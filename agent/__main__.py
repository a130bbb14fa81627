"""``python -m agent`` is the ``peering`` command."""

from agent.cli import main

main()
