"""The examples run for real: the quick start drives a prefork worker on the filesystem broker;
the worker-celery-email service runs its own test suite against real Redis and SMTP."""

from __future__ import annotations

import os
import re
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


EMAIL_SERVICE = ROOT / "examples" / "worker-celery-email"


@pytest.mark.integration
def test_worker_celery_email_service_passes_its_own_tests() -> None:
    """The example service's suite (real prefork worker, Redis, SMTP server), run as its CI would."""
    test_files = sorted((EMAIL_SERVICE / "tests").glob("test_*.py"))
    expected = sum(len(re.findall(r"^def test_", f.read_text(), re.MULTILINE)) for f in test_files)
    assert expected >= 10, f"the example's tests were not found in {EMAIL_SERVICE / 'tests'}"
    # The service is configured by environment only: none of this process's settings leak in.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CELERY_KIT_", "EMAIL_WORKER_", "SMTP_", "PYTEST_"))
        or key.startswith("CELERY_KIT_TEST_")
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"],
        cwd=EMAIL_SERVICE,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    summary = output.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed is not None, output[-6000:]
    assert int(passed.group(1)) >= expected, summary
    assert not re.search(r"\b(failed|error|errors|skipped)\b", summary), summary
