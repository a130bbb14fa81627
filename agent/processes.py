"""Stopping child processes the agent's tools start (dev broker, demo agents) and the test
fixtures reuse: one place for "ask nicely, then insist"."""

from __future__ import annotations

import signal
import subprocess


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM (a clean shutdown), SIGKILL if it takes longer than ``timeout``; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


def kill_process(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL, as a crash would: no flush, no clean shutdown."""
    if process.poll() is None:
        process.kill()
    process.wait()
