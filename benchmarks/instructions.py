"""Machine instructions per call, counted by valgrind: the noise-free side of the benchmarks.

``run.py`` times the variants side by side, and its ratios still move with the machine
(a shared two-core VM moves them by 10 % from run to run). Instruction counts do not:
the same code path executes the same instructions, so a change of 1 % in the task path
shows as 1 %, and each part of ``instrument()`` can be weighed on its own (``kit+<part>``).
Instructions are not time -- cache misses and system calls are not in them -- so the
timed ratios stay the measurement of record; these say where the time goes.

Each variant runs in its own interpreter (``variant_process.py --run``) under
``valgrind --tool=cachegrind``: once with N counted calls and once with none, both after
the same warm-up, and the difference divided by N is the cost of one call.

    python benchmarks/instructions.py                   # apply() at INFO, every variant and part
    python benchmarks/instructions.py --output benchmarks/results/instructions.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_app import INSTRUMENT_PARTS, VARIANTS  # noqa: E402

#: What is counted: (label, variant process --run, log level, variants).
MEASUREMENTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("apply_small", "apply", "INFO", (*VARIANTS, *(f"kit+{p}" for p in INSTRUMENT_PARTS))),
    ("apply_small_warning", "apply", "WARNING", VARIANTS),
    ("publish_memory", "publish", "INFO", VARIANTS),
)
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def instructions(variant: str, run: str, level: str, calls: int) -> int:
    """Instructions one whole ``variant_process --run`` executes."""
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.variant_process",
        variant,
        "--run",
        run,
        "--calls",
        str(calls),
        "--level",
        level,
    ]
    # Fixed string hashing: dict probing, and so the count, is the same on every run.
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    found = _REFS.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return int(found.group(1).replace(",", ""))


def per_call(variant: str, run: str, level: str, calls: int, pool: concurrent.futures.Executor) -> int:
    with_calls = pool.submit(instructions, variant, run, level, calls)
    without = pool.submit(instructions, variant, run, level, 0)
    return round((with_calls.result() - without.result()) / calls)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000, help="counted calls per variant (default 1000)")
    parser.add_argument("--output", type=Path, help="JSON results file")
    options = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt install valgrind", file=sys.stderr)
        return 2
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "calls": options.calls,
    }
    lines = ["| measurement | variant | instructions/call | / plain | vs kit |", "|---|---|---|---|---|"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for label, run, level, variants in MEASUREMENTS:
            counts = {v: per_call(v, run, level, options.calls, pool) for v in variants}
            results[label] = counts
            for variant, count in counts.items():
                extra = f"{count - counts['kit']:+,}" if variant != "kit" else ""
                lines.append(f"| {label} | {variant} | {count:,} | {count / counts['plain']:.3f} | {extra} |")
            print(f"{label}: done", file=sys.stderr)
    print("\n".join(lines))
    if options.output:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
