"""Wall time of ``python -m celery_kit.health worker live`` -- what a Kubernetes exec probe pays.

Run from the repository root::

    PYTHONPATH=src python benchmarks/probe_cli.py [runs]

It writes a state file for its own (live) process, runs the probe ``runs`` times (default
30) as a fresh interpreter each time, exactly as the kubelet does, and prints the median,
p90 and maximum. For comparison it also times ``python -c "import celery"`` once.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

from celery_kit.health import write_state
from celery_kit.health._state import SCHEMA_VERSION, process_start_stamp


def _time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(runs: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "state.json")
        now = time.monotonic()
        write_state(
            path,
            {
                "v": SCHEMA_VERSION,
                "kind": "worker",
                "pid": os.getpid(),
                "start_stamp": process_start_stamp(os.getpid()),
                "phase": "consuming",
                "phase_since": now,
                "consumed_once": True,
                "mono": now + 3600,
            },
        )
        probe = [sys.executable, "-m", "celery_kit.health", "worker", "live", "--file", path]
        _time(probe)  # warm the page cache and the bytecode cache
        samples = sorted(_time(probe) for _ in range(runs))
    celery = _time([sys.executable, "-c", "import celery, celery_kit; celery_kit.instrument"])
    bare = statistics.median(_time([sys.executable, "-c", "pass"]) for _ in range(5))
    ms = [s * 1000 for s in samples]
    print(
        f"probe CLI over {runs} runs: median {statistics.median(ms):.1f} ms, "
        f"p90 {ms[int(len(ms) * 0.9) - 1]:.1f} ms, max {ms[-1]:.1f} ms"
    )
    print(
        f"bare interpreter start: {bare * 1000:.1f} ms; importing celery + celery_kit: {celery * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
