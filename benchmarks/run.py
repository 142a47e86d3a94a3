"""Side-by-side benchmarks: plain Celery, Celery ``pydantic=True``, ValidatedTask, and
ValidatedTask with ``instrument(app)`` fully on.

Every comparison runs its variants interleaved in one process run (A B C D, D C B A, ...),
takes the median per variant and the ratio to plain Celery per round, so machine noise
hits all variants alike. Exits non-zero only on errors or lost tasks, never on speed.

    python benchmarks/run.py            # full run; writes results/latest.json and docs/performance.md
    python benchmarks/run.py --quick    # small N, for CI (under a minute)
    python benchmarks/run.py --only in-process,producer   # some measurements only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import celery  # noqa: E402
import pydantic  # noqa: E402
import redis  # noqa: E402

from benchmarks.bench_app import UNIQUE, VARIANTS  # noqa: E402
from celery_kit.testing import WorkerProcess  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


class LostTasks(RuntimeError):
    pass


class VariantProcesses:
    """One interpreter per variant (``benchmarks/variant_process.py``), driven over pipes.

    Each variant is measured in a process that imports, connects and logs only what its
    own users' processes would, while the rounds stay interleaved.
    """

    def __init__(self, variants: tuple[str, ...] = (*VARIANTS, UNIQUE)) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
        }
        self._processes = {
            v: subprocess.Popen(
                [sys.executable, "-m", "benchmarks.variant_process", v],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for v in variants
        }

    def ask(self, variant: str, op: str, **arguments: Any) -> Any:
        process = self._processes[variant]
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {variant} process exited (code {process.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{variant} failed to {op}:\n{answer['error']}")
        return answer["value"]

    def close(self) -> None:
        for process in self._processes.values():
            if process.stdin is not None:
                process.stdin.close()
        for process in self._processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


#: Started by main(); every in-process and producer measurement runs in them.
PROCESSES: VariantProcesses


#: The order variants run in within a round (the table keeps ``VARIANTS`` order).
RUN_ORDER = ("pydantic", "plain", "kit_full", UNIQUE, "kit")


def interleaved(
    rounds: int, measure: Callable[[str], float], variants: tuple[str, ...] = VARIANTS
) -> dict[str, Any]:
    """Run ``measure(variant)`` interleaved; medians and per-round ratios to ``plain``.

    Every other round runs the variants in reverse order (A B C D, D C B A, ...), so no
    variant always runs right after the same other one. ``plain`` and ``kit_full``, the
    pair the targets compare, run next to each other in every round: the machine drifts
    less between neighbours than across a whole round.
    """
    samples: dict[str, list[float]] = {v: [] for v in variants}
    order = sorted(variants, key=RUN_ORDER.index)
    for round_ in range(rounds):
        for variant in order if round_ % 2 == 0 else order[::-1]:
            samples[variant].append(measure(variant))
    ratios = {
        v: statistics.median(s / p for s, p in zip(samples[v], samples["plain"], strict=True))
        for v in variants
    }
    return {
        "median": {v: statistics.median(s) for v, s in samples.items()},
        "ratio": ratios,
        "samples": samples,
    }


def bench_in_process(
    n: int, rounds: int, heavy: bool, direct: bool, log_level: int = logging.INFO
) -> dict[str, Any]:
    level = logging.getLevelName(log_level)

    def measure(variant: str) -> float:
        value: float = PROCESSES.ask(variant, "apply", n=n, heavy=heavy, direct=direct, level=level)
        return value  # µs per call

    for variant in VARIANTS:  # warm up imports and caches
        measure(variant)
    return interleaved(rounds, measure)


def bench_producer(n: int, rounds: int) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    queues = {v: f"bench-prod-{run}-{v}" for v in VARIANTS}

    def measure(variant: str) -> float:
        value: float = PROCESSES.ask(
            variant, "publish", broker=REDIS_URL, queue=queues[variant], n=n, purge=True
        )
        return value  # messages per second

    try:
        for variant in VARIANTS:
            PROCESSES.ask(variant, "prepare", broker=REDIS_URL, queue=queues[variant])
        return interleaved(rounds, measure)
    finally:
        for variant in VARIANTS:
            PROCESSES.ask(variant, "delete_queue", broker=REDIS_URL, queue=queues[variant])


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_end_to_end(
    broker_url: str, n: int, rounds: int, variants: tuple[str, ...] = VARIANTS
) -> dict[str, Any]:
    counter = redis.Redis.from_url(REDIS_URL)
    rss: dict[str, list[dict[str, int]]] = {v: [] for v in variants}

    def measure(variant: str) -> float:
        run = uuid.uuid4().hex[:8]
        queue, key = f"bench-e2e-{run}-{variant}", f"bench:done:{run}"
        env = {
            "BENCH_VARIANT": variant,
            "BENCH_BROKER_URL": broker_url,
            "BENCH_QUEUE": queue,
            "BENCH_COUNTER_URL": REDIS_URL,
            "BENCH_COUNTER_KEY": key,
            "BENCH_METRICS_PORT": str(_free_port()),
            # The worker imports what this process imports: the caller's path first.
            "PYTHONPATH": os.pathsep.join(filter(None, (os.environ.get("PYTHONPATH"), str(ROOT)))),
        }
        PROCESSES.ask(variant, "prepare", broker=broker_url, queue=queue)
        worker = WorkerProcess("benchmarks.bench_app", queues=[queue], concurrency=2, cwd=ROOT, env=env)
        worker.start(timeout=60)
        try:
            started = time.perf_counter()
            PROCESSES.ask(variant, "publish", broker=broker_url, queue=queue, n=n, purge=False)
            deadline = time.monotonic() + max(60, n / 50)
            while int(counter.get(key) or 0) < n:
                if time.monotonic() > deadline:
                    seen = int(counter.get(key) or 0)
                    raise LostTasks(
                        f"{variant} on {broker_url.split(':', maxsplit=1)[0]}: {seen} of {n} done"
                    )
                time.sleep(0.005)
            elapsed = time.perf_counter() - started
            time.sleep(0.3)
            done = int(counter.get(key) or 0)
            if done != n:
                raise LostTasks(f"{variant}: {done} completions for {n} tasks")
            main = _rss_kib(worker.pid)
            kids = sum(_rss_kib(pid) for pid in _children(worker.pid))
            rss[variant].append({"main_kib": main, "children_kib": kids})
        finally:
            worker.stop()
            counter.delete(key)
            PROCESSES.ask(variant, "delete_queue", broker=broker_url, queue=queue)
        return n / elapsed  # tasks per second

    result = interleaved(rounds, measure, variants)
    result["rss_kib"] = {
        v: {k: int(statistics.median(r[k] for r in rows)) for k in ("main_kib", "children_kib")}
        for v, rows in rss.items()
    }
    return result


def machine() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "celery": celery.__version__,
        "pydantic": pydantic.VERSION,
    }


#: Per measurement: (variant, comparison, goal). A number is a goal for the variant's
#: ratio to plain Celery; a variant name compares the two medians (same unit, same run).
TARGETS: dict[str, tuple[tuple[str, str, float | str], ...]] = {
    "apply_small": (("kit_full", "<=", 1.10), ("kit_full", "<", "pydantic")),
    "producer_redis": (("kit_full", ">=", 0.90),),
    "e2e_redis": (("kit_full", ">=", 0.95),),
    "e2e_rabbitmq": (("kit_full", ">=", 0.95),),
}
UNITS = {
    "apply_small": "µs/call",
    "apply_small_warning": "µs/call",
    "apply_heavy": "µs/call",
    "call_small": "µs/call",
    "producer_redis": "msgs/s",
    "e2e_redis": "tasks/s",
    "e2e_rabbitmq": "tasks/s",
}
#: What ``--only`` accepts besides the measurement names.
GROUPS = {
    "in-process": ("apply_small", "apply_small_warning", "apply_heavy", "call_small"),
    "producer": ("producer_redis",),
    "e2e": ("e2e_redis", "e2e_rabbitmq"),
}
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
}


def check_targets(name: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of one measurement, each with the value it was judged on and whether it held."""
    checked = []
    for variant, op, goal in TARGETS.get(name, ()):
        if variant not in row["median"] or (isinstance(goal, str) and goal not in row["median"]):
            continue
        value = row["median"][variant] if isinstance(goal, str) else row["ratio"][variant]
        against = row["median"][goal] if isinstance(goal, str) else goal
        checked.append(
            {"variant": variant, "op": op, "goal": goal, "value": value, "met": _COMPARE[op](value, against)}
        )
    return checked


def _middle_half(samples: list[float], baseline: list[float]) -> str:
    """The interquartile range of the per-round ratios: how far one run's verdict can be
    trusted when the median lands near a target."""
    ratios = sorted(s / b for s, b in zip(samples, baseline, strict=True))
    if len(ratios) < 4:
        return f"{ratios[0]:.2f}-{ratios[-1]:.2f} (all)"
    low, _, high = statistics.quantiles(ratios, n=4)
    return f"{low:.2f}-{high:.2f}"


def table(results: dict[str, Any]) -> str:
    measured = [results[name] for name in UNITS if name in results]
    # The unique variant runs end to end on Redis only: a column when it was measured.
    columns = (*VARIANTS, *((UNIQUE,) if any(UNIQUE in row["median"] for row in measured) else ()))
    lines = [
        "| measurement | unit | "
        + " | ".join(columns)
        + " | kit_full / plain | middle half of the rounds | target |",
        "|---|---|" + "---|" * len(columns) + "---|---|---|",
    ]
    for name, unit in UNITS.items():
        if name not in results:
            continue
        row = results[name]
        values = " | ".join(f"{row['median'][v]:,.1f}" if v in row["median"] else "-" for v in columns)
        goals = []
        for target in check_targets(name, row):
            goal = target["goal"]
            shown = f"{goal} ({row['median'][goal]:,.1f})" if isinstance(goal, str) else f"{goal:.2f}"
            goals.append(f"{target['op']} {shown} ({'met' if target['met'] else 'missed'})")
        spread = _middle_half(row["samples"]["kit_full"], row["samples"]["plain"])
        lines.append(
            f"| {name} | {unit} | {values} | {row['ratio']['kit_full']:.3f} | {spread} | {'; '.join(goals)} |"
        )
    if "e2e_redis" in results:
        rss = results["e2e_redis"]["rss_kib"]
        values = " | ".join(
            f"{(rss[v]['main_kib'] + rss[v]['children_kib']) / 1024:,.1f}" if v in rss else "-"
            for v in columns
        )
        extra = (rss["kit_full"]["main_kib"] + rss["kit_full"]["children_kib"]) - (
            rss["plain"]["main_kib"] + rss["plain"]["children_kib"]
        )
        lines.append(
            f"| worker RSS (main + 2 children) | MB | {values} | {extra / 1024:+.1f} MB | | <= +15 MB |"
        )
    return "\n".join(lines)


def _steps(value: str) -> list[str]:
    chosen: list[str] = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        names = GROUPS.get(part, (part,))
        for name in names:
            if name not in UNITS:
                choices = ", ".join([*GROUPS, *UNITS])
                raise argparse.ArgumentTypeError(f"unknown measurement {part!r}; choose from {choices}")
            if name not in chosen:
                chosen.append(name)
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small N, few rounds; end to end only plain vs kit_full (CI, under a minute)",
    )
    parser.add_argument(
        "--only",
        type=_steps,
        metavar="NAMES",
        help="comma-separated measurements or groups to run: "
        + ", ".join([*GROUPS, *UNITS])
        + " (default: all)",
    )
    parser.add_argument("--rounds", type=int, help="rounds of the in-process and producer comparisons")
    parser.add_argument("--output", type=Path, help="JSON results file")
    parser.add_argument("--docs", type=Path, help="write the performance page here")
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="JSON",
        help="measure nothing: print the table of a results file (and write --docs from it), "
        "e.g. after new instruction counts",
    )
    options = parser.parse_args()
    if options.from_results:
        recorded = json.loads(options.from_results.read_text())
        text = table(recorded)
        print(text)
        if options.docs:
            options.docs.write_text(performance_page(recorded, text))
        return 0
    quick = options.quick
    global PROCESSES
    PROCESSES = VariantProcesses()
    results: dict[str, Any] = {"machine": machine(), "quick": quick}
    # Many short rounds rather than a few long ones: each round's ratio compares
    # variants measured moments apart, and the median of many ignores noisy rounds.
    n_call, n_pub, n_e2e = (300, 300, 300) if quick else (1000, 250, 5000)
    rounds, e2e_rounds = (3, 1) if quick else (21, 5)
    rounds = options.rounds or rounds
    # Publishing to a real broker is the noisiest measurement: short slices, many rounds.
    pub_rounds = options.rounds or (rounds if quick else 61)
    # Quick runs still start a real worker on each broker and fail on a lost task, but
    # only for the two ends of the comparison: each worker start costs seconds.
    e2e_variants = ("plain", "kit_full") if quick else VARIANTS
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "apply_small": lambda: bench_in_process(n_call, rounds, heavy=False, direct=False),
        "apply_small_warning": lambda: bench_in_process(
            n_call, rounds, heavy=False, direct=False, log_level=logging.WARNING
        ),
        "apply_heavy": lambda: bench_in_process(n_call // 3, rounds, heavy=True, direct=False),
        "call_small": lambda: bench_in_process(n_call, rounds, heavy=False, direct=True),
        "producer_redis": lambda: bench_producer(n_pub, pub_rounds),
        "e2e_redis": lambda: bench_end_to_end(REDIS_URL, n_e2e, e2e_rounds, (*e2e_variants, UNIQUE)),
        "e2e_rabbitmq": lambda: bench_end_to_end(AMQP_URL, n_e2e, e2e_rounds, e2e_variants),
    }
    try:
        for name in options.only or steps:
            started = time.monotonic()
            results[name] = steps[name]()
            print(f"{name}: done in {time.monotonic() - started:.1f}s", file=sys.stderr)
    except LostTasks as exc:
        print(f"LOST TASKS: {exc}", file=sys.stderr)
        return 1
    finally:
        PROCESSES.close()
    results["targets"] = {name: check_targets(name, results[name]) for name in UNITS if name in results}
    text = table(results)
    print(text)
    if options.output:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if options.docs:
        options.docs.write_text(performance_page(results, text))
    return 0


def instruction_table(path: Path = ROOT / "benchmarks" / "results" / "instructions.json") -> str:
    """The last ``benchmarks/instructions.py`` counts as a table, or a note that there are none."""
    if not path.exists():
        return "(No instruction counts recorded: run `python benchmarks/instructions.py --output ...`.)"
    counts = json.loads(path.read_text())
    lines = [
        f"Counted {counts['date']}, {counts['calls']:,} calls each, after a warm-up.",
        "",
        "| measurement | variant | instructions per call | / plain | vs kit |",
        "|---|---|---|---|---|",
    ]
    for label in ("apply_small", "apply_small_warning", "publish_memory"):
        row = counts.get(label)
        if not row:
            continue
        for variant, count in row.items():
            extra = f"{count - row['kit']:+,}" if variant != "kit" else ""
            lines.append(f"| {label} | {variant} | {count:,} | {count / row['plain']:.3f} | {extra} |")
    return "\n".join(lines)


def performance_page(results: dict[str, Any], text: str) -> str:
    m = results["machine"]
    return f"""# Performance

Measured by `make bench` (`benchmarks/run.py`) on {m["date"]}: Python {m["python"]},
Celery {m["celery"]}, pydantic {m["pydantic"]}, {m["cpus"]} CPUs ({m["platform"]}).

- **plain**: a plain Celery task taking the three fields as arguments (no validation);
- **pydantic**: Celery's own `pydantic=True`;
- **kit**: `@validated_task` (validation in the caller and on the worker);
- **kit_full**: `@validated_task` with `instrument(app)` fully on (JSON logs of every
  lifecycle step, Prometheus metrics, alerts, health);
- **kit_full+unique** (`e2e_redis` only): `kit_full` with `unique=Unique(on=("subject",))`,
  a fresh key per message: one Redis lock per task, one round trip on publish and one at
  the finish (the start's lease is sent without waiting; see [Unique tasks](uniqueness.md)).

## How it is measured

Each variant runs in **its own interpreter** (`benchmarks/variant_process.py`), as it
would in production: a plain Celery process imports nothing of the kit, so it has none
of the kit's signal receivers (Celery skips sending a signal nobody receives), and it
logs the way `celery worker -l INFO` logs -- Celery's "Task ... succeeded" line per task
through the standard library. `kit_full` logs the kit's JSON lifecycle lines instead
(`instrument()` turns Celery's per-task lines off). All lines go to `/dev/null`.
`apply_small_warning` runs every variant at `WARNING`, where no variant writes a line
per task: what is left is validation and instrumentation alone.

The harness still interleaves the variants (A B C D, D C B A, ...) over many short
rounds, with `plain` and `kit_full` side by side in each; each cell is the median of the
rounds, and the ratio is the median of the per-round ratios to plain Celery, so machine
noise hits all variants alike. The middle half of the per-round ratios shows how much
noise is left: on a shared two-core machine, publishing and end-to-end ratios move by
several percent between runs, so a median within that distance of a target is not a
verdict either way.

{text}

`apply_*` and `call_small` run in-process (`task.apply()` and `task(...)`); `apply_heavy`
uses an order with 50 nested items. `producer_redis` publishes with `delay()` to Redis
(validation, serialisation, publish). `e2e_*` publishes 5,000 tasks, from the variant's
own process, through a real broker to one prefork worker (concurrency 2, prefetch 4,
results ignored) and counts completions on the worker side; a lost task fails the run.

## Where the time goes

Timings on a shared machine move by several percent from run to run.
`benchmarks/instructions.py` (`make bench-instructions`) counts the machine instructions
one call executes, under valgrind, which do not: the same path executes the same
instructions, and each part of `instrument()` can be weighed on its own (`kit+logging`,
`kit+metrics`, ...: `kit` with that one part on). Instructions are not time -- cache
misses and system calls are not in them -- but they show where the time goes.

{instruction_table()}

Each `kit+<part>` row is `kit` with one part of `instrument()` on, and includes what
every part needs: Celery's two signals and the bridge's events (`kit+alerts` is little
more than that, since the alert observer reads failures only). `kit+logging` also trades
Celery's per-task line for the kit's two.

Per attempt, `kit_full` does on top of validation:

- **Celery's two signals.** With a receiver connected, Celery sends `task_prerun` and
  `task_postrun` for every task, each with a lock, a scan of the receivers and a keyword
  dictionary per receiver. The kit connects them when the first observer subscribes, so
  a process that only validates pays nothing; the health probe's receivers are connected
  in solo workers only.
- **Two classified events** from the bridge (the request is looked up once per attempt),
  handed to the observers that read them.
- **The task context** (`task_id`, `task_name`, `queue`, `retries`, `parent_id`,
  `root_id`) bound in structlog's ContextVars for the attempt and cleared after it: twelve
  ContextVar writes.
- **Two JSON lines** (`task started`, `task succeeded`), each written and flushed on its
  own so a hung task still shows its start. Rendered by orjson with structlog's
  processors inlined, the two cost about what plain Celery's one line costs through the
  standard library (compare `apply_small` with `apply_small_warning`).
- **Six metric updates** (started, in progress up and down, outcome, duration histogram,
  last success) through prometheus-client, on label children resolved once.

Per publish `kit_full` adds a `task enqueued` line, a counter, the publish time header
and the propagated context header. Turn off what you do not need
(`instrument(app, logging=False)`), or raise the log level to `WARNING` to keep only
problems.

`apply_heavy` shows one cost that is Celery's: for an eager call, Celery's own "Task ...
succeeded" line writes `repr()` of the arguments, and a validated payload of 50 nested
models has an expensive `repr()`. `kit_full` turns that line off; `kit` without
`instrument()` keeps Celery's logging as it is.

## The in-process target

The `apply()` target -- at most 1.10 times plain Celery with everything on -- is not met.
Validation alone stays below `pydantic=True`; then Celery's two signals and the bridge
cost about a tenth of a bare `apply()` before any observer runs (the `kit+alerts` row),
and the context, the lines and the metrics come on top. By the counts above, meeting the
target would mean dropping per-attempt work -- the start line and the metrics both --
rather than doing it faster. End to end, where a task also crosses a broker and a pool,
the same work is a few percent, and `kit_full` workers skip Celery's "Task received" line
in the consumer, their busiest process.
"""


if __name__ == "__main__":
    sys.exit(main())
