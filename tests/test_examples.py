"""The examples run for real: the quick start drives a prefork worker on the filesystem broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_quickstart_demo_shows_every_behaviour() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("1. valid task       -> EmailSent(message_id=") for line in lines)
    assert "2. invalid payload  -> refused in the caller, nothing published (1 error)" in lines
    assert "3. bad raw message  -> worker refused it, not retried; fields: ['subject', 'to']" in lines
    assert "4. transient error  -> retried, succeeded on attempt 3" in lines
    assert "5. soft time limit  -> SoftTimeLimitExceeded; cleanup ran: True" in lines
    assert lines[-1] == "demo finished"
