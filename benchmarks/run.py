"""Side-by-side benchmarks: plain Celery (with and without task events), Celery
``pydantic=True``, ValidatedTask, and ValidatedTask with ``instrument(app)`` fully on.

Every comparison runs its variants interleaved in one process run (A B C D, D C B A, ...),
takes the median per variant and the per-round ratios, so machine noise hits all variants
alike. The targets (``TARGETS``) are end to end, on a real prefork worker at INFO:
throughput and worker CPU per task (every process of the worker). Exits non-zero only on
errors or lost tasks, never on speed.

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

from benchmarks.bench_app import EVENTS, INSTRUMENT_PARTS, UNIQUE, VARIANTS  # noqa: E402
from benchmarks.cpu import sample as sample_cpu  # noqa: E402
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

    def __init__(self, variants: tuple[str, ...] = (*VARIANTS, EVENTS, UNIQUE)) -> None:
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


#: Every variant, in the order of the table's columns.
COLUMNS = ("plain", EVENTS, "pydantic", "kit", "kit_full", UNIQUE)
#: Every variant measured end to end.
E2E_VARIANTS = ("plain", EVENTS, "pydantic", "kit", "kit_full")
#: The order variants run in within a round: each pair a target compares runs side by
#: side (kit/pydantic, plain/kit_full, kit_full/plain_events).
#: The ``kit+<part>`` breakdowns run last when asked for (they are no target's pair).
RUN_ORDER = ("kit", "pydantic", "plain", "kit_full", EVENTS, UNIQUE, *(f"kit+{p}" for p in INSTRUMENT_PARTS))


def interleaved_metrics(
    rounds: int, measure: Callable[[str], dict[str, float]], variants: tuple[str, ...] = VARIANTS
) -> dict[str, dict[str, Any]]:
    """Run ``measure(variant)`` interleaved; one row (medians, ratios to ``plain``, samples)
    per metric ``measure`` returns.

    Every other round runs the variants in reverse order (A B C D, D C B A, ...), so no
    variant always runs right after the same other one, and the pairs the targets compare
    run next to each other in every round (``RUN_ORDER``): the machine drifts less between
    neighbours than across a whole round.
    """
    samples: dict[str, dict[str, list[float]]] = {}
    order = sorted(variants, key=RUN_ORDER.index)
    for round_ in range(rounds):
        for variant in order if round_ % 2 == 0 else order[::-1]:
            for metric, value in measure(variant).items():
                samples.setdefault(metric, {v: [] for v in variants})[variant].append(value)
    return {metric: summary(by_variant) for metric, by_variant in samples.items()}


def summary(samples: dict[str, list[float]]) -> dict[str, Any]:
    """Medians per variant and the median of the per-round ratios to ``plain``."""
    return {
        "median": {v: statistics.median(s) for v, s in samples.items()},
        "ratio": {v: statistics.median(ratios(samples, v, "plain")) for v in samples},
        "samples": samples,
    }


def interleaved(
    rounds: int, measure: Callable[[str], float], variants: tuple[str, ...] = VARIANTS
) -> dict[str, Any]:
    """:func:`interleaved_metrics` for a ``measure`` that returns one number."""
    return interleaved_metrics(rounds, lambda v: {"value": measure(v)}, variants)["value"]


def ratios(samples: dict[str, list[float]], variant: str, baseline: str) -> list[float]:
    """``variant / baseline`` round by round: the two were measured moments apart."""
    return [s / b for s, b in zip(samples[variant], samples[baseline], strict=True)]


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


def bench_producer(n: int, rounds: int, variants: tuple[str, ...] = (*VARIANTS, EVENTS)) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    queues = {v: f"bench-prod-{run}-{v}" for v in variants}

    def measure(variant: str) -> float:
        value: float = PROCESSES.ask(
            variant, "publish", broker=REDIS_URL, queue=queues[variant], n=n, purge=True
        )
        return value  # messages per second

    try:
        for variant in variants:
            PROCESSES.ask(variant, "prepare", broker=REDIS_URL, queue=queues[variant])
        return interleaved(rounds, measure, variants)
    finally:
        for variant in variants:
            PROCESSES.ask(variant, "delete_queue", broker=REDIS_URL, queue=queues[variant])


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: What each variant's worker writes per task at INFO: checked after every end-to-end
#: run, so a variant never runs with less logging than its users' workers have.
PER_TASK_LINE = {
    "plain": "succeeded in",  # Celery's "Task bench.send[...] succeeded in 0.001s: None"
    EVENTS: "succeeded in",
    "pydantic": "succeeded in",
    "kit": "succeeded in",
    "kit_full": '"task succeeded"',  # the kit's JSON line (instrument() turns Celery's off)
    UNIQUE: '"task succeeded"',
    # The one-part breakdowns (``kit+<part>``, measured by hand): with ``logging=False`` the
    # worker keeps Celery's own logging and its line.
    "kit+logging": '"task succeeded"',
    "kit+metrics": "succeeded in",
    "kit+alerts": "succeeded in",
    "kit+health": "succeeded in",
}


def worker(
    variant: str, broker_url: str, queue: str, counter_key: str, counter_url: str = REDIS_URL
) -> WorkerProcess:
    """A real prefork worker (concurrency 2, ``-l INFO``, output to a file) for ``variant``,
    counting its completions at ``counter_key``; ``plain_events`` runs with ``-E``, as a
    worker watched by Flower does."""
    env = {
        "BENCH_VARIANT": variant,
        "BENCH_BROKER_URL": broker_url,
        "BENCH_QUEUE": queue,
        "BENCH_COUNTER_URL": counter_url,
        "BENCH_COUNTER_KEY": counter_key,
        "BENCH_METRICS_PORT": str(_free_port()),
        # The worker imports what this process imports: the caller's path first.
        "PYTHONPATH": os.pathsep.join(filter(None, (os.environ.get("PYTHONPATH"), str(ROOT)))),
    }
    return WorkerProcess(
        "benchmarks.bench_app",
        queues=[queue],
        concurrency=2,
        cwd=ROOT,
        env=env,
        loglevel="INFO",
        extra_args=["-E"] if variant == EVENTS else [],
    )


#: Seconds a started worker idles before the measured window opens: the pool's first
#: moments (imports on first use, the first heartbeat) stay out of it.
SETTLE = 0.5


def bench_end_to_end(
    broker_url: str, n: int, rounds: int, variants: tuple[str, ...] = E2E_VARIANTS
) -> dict[str, dict[str, Any]]:
    """Throughput (tasks/s) and worker CPU per task (µs, all worker processes), measured in
    the same window: from the first publish to the last completion, start-up and shutdown
    excluded."""
    counter = redis.Redis.from_url(REDIS_URL)
    broker = broker_url.split(":", maxsplit=1)[0]
    rss: dict[str, list[dict[str, int]]] = {v: [] for v in variants}

    def measure(variant: str) -> dict[str, float]:
        run = uuid.uuid4().hex[:8]
        queue, key = f"bench-e2e-{run}-{variant}", f"bench:done:{run}"
        PROCESSES.ask(variant, "prepare", broker=broker_url, queue=queue)
        process = worker(variant, broker_url, queue, key)
        process.start(timeout=60)
        try:
            time.sleep(SETTLE)
            before = sample_cpu(process.pid)
            started = time.perf_counter()
            PROCESSES.ask(variant, "publish", broker=broker_url, queue=queue, n=n, purge=False)
            deadline = time.monotonic() + max(60, n / 50)
            while int(counter.get(key) or 0) < n:
                if time.monotonic() > deadline:
                    raise LostTasks(f"{variant} on {broker}: {int(counter.get(key) or 0)} of {n} done")
                time.sleep(0.005)
            elapsed = time.perf_counter() - started
            spent = sample_cpu(process.pid) - before
            time.sleep(0.3)
            done = int(counter.get(key) or 0)
            if done != n:
                raise LostTasks(f"{variant} on {broker}: {done} completions for {n} tasks")
            if spent.child_pids != before.child_pids or len(before.child_pids) != process.concurrency:
                # A replaced pool process is still counted (in the main process's reaped
                # time), but the main/pool split would be wrong: a run has one pool.
                raise RuntimeError(f"{variant}: the pool changed during the run ({spent.child_pids})")
            if PER_TASK_LINE[variant] not in process.log():
                raise RuntimeError(f"{variant}'s worker wrote no {PER_TASK_LINE[variant]} line at INFO")
            rss[variant].append(
                {
                    "main_kib": _rss_kib(process.pid),
                    "children_kib": sum(_rss_kib(pid) for pid in spent.child_pids),
                }
            )
        finally:
            process.stop()
            process.remove_log()
            counter.delete(key)
            PROCESSES.ask(variant, "delete_queue", broker=broker_url, queue=queue)
        return {
            "throughput": n / elapsed,  # tasks per second
            "cpu": spent.total / n * 1e6,  # µs of CPU per task, every worker process
            "cpu_main": spent.main / n * 1e6,
            "cpu_pool": spent.children / n * 1e6,
        }

    rows = interleaved_metrics(rounds, measure, variants)
    throughput, cpu = rows["throughput"], rows["cpu"]
    throughput["rss_kib"] = {
        v: {k: int(statistics.median(r[k] for r in by)) for k in ("main_kib", "children_kib")}
        for v, by in rss.items()
    }
    cpu["split"] = {
        v: {"main": rows["cpu_main"]["median"][v], "pool": rows["cpu_pool"]["median"][v]} for v in variants
    }
    return {"throughput": throughput, "cpu": cpu}


def machine() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "celery": celery.__version__,
        "pydantic": pydantic.VERSION,
    }


#: Per row: (variant, comparison, goal, baseline). The value judged is the median over the
#: rounds of the per-round ratio ``variant / baseline`` (both measured side by side in the
#: same run); its middle half is reported with it. Issue 16: the targets are end to end.
TARGETS: dict[str, tuple[tuple[str, str, float, str], ...]] = {
    "apply_small": (("kit", "<", 1.0, "pydantic"),),
    "e2e_redis": (("kit_full", ">=", 0.97, "plain"),),
    "e2e_redis_cpu": (
        ("kit_full", "<=", 1.05, "plain"),
        ("kit_full", "<=", 0.95, EVENTS),
        ("kit", "<", 1.0, "pydantic"),
    ),
    "e2e_rabbitmq": (("kit_full", ">=", 0.97, "plain"),),
    "e2e_rabbitmq_cpu": (
        ("kit_full", "<=", 1.05, "plain"),
        ("kit_full", "<=", 0.95, EVENTS),
        ("kit", "<", 1.0, "pydantic"),
    ),
}
#: Ratios reported beside the targets, with their spread, but not judged.
REPORTED: dict[str, tuple[tuple[str, str], ...]] = {
    "producer_redis": (("kit_full", "plain"), (EVENTS, "plain")),
    "e2e_redis": ((EVENTS, "plain"), ("kit_full", EVENTS)),
    "e2e_redis_cpu": ((EVENTS, "plain"),),
    "e2e_rabbitmq": ((EVENTS, "plain"), ("kit_full", EVENTS)),
    "e2e_rabbitmq_cpu": ((EVENTS, "plain"),),
}
#: The worker's resident memory (main process and both pool children, e2e_redis): at most
#: this much more for kit_full than for plain Celery.
RSS_GOAL_MB = 15.0
UNITS = {
    "apply_small": "µs/call",
    "apply_small_warning": "µs/call",
    "apply_heavy": "µs/call",
    "call_small": "µs/call",
    "producer_redis": "msgs/s",
    "e2e_redis": "tasks/s",
    "e2e_redis_cpu": "CPU µs/task",
    "e2e_rabbitmq": "tasks/s",
    "e2e_rabbitmq_cpu": "CPU µs/task",
}
#: What ``--only`` accepts besides the measurement names (an e2e run measures both rows).
GROUPS = {
    "in-process": ("apply_small", "apply_small_warning", "apply_heavy", "call_small"),
    "producer": ("producer_redis",),
    "e2e": ("e2e_redis", "e2e_rabbitmq"),
}
STEPS = ("apply_small", "apply_small_warning", "apply_heavy", "call_small", "producer_redis", *GROUPS["e2e"])
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
}


def _spread(values: list[float]) -> tuple[float, float]:
    """The middle half (interquartile range) of per-round ratios; all of them under 4 rounds."""
    ordered = sorted(values)
    if len(ordered) < 4:
        return ordered[0], ordered[-1]
    low, _, high = statistics.quantiles(ordered, n=4)
    return low, high


def check_targets(name: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of one row, each with its median ratio, spread and whether it held; then
    the reported ratios (``goal`` None). A pair not measured in the row is left out."""
    checked = []
    judged = [(v, op, goal, base) for v, op, goal, base in TARGETS.get(name, ())]
    reported = [(v, None, None, base) for v, base in REPORTED.get(name, ())]
    for variant, op, goal, baseline in (*judged, *reported):
        samples = row["samples"]
        if variant not in samples or baseline not in samples:
            continue
        per_round = ratios(samples, variant, baseline)
        value = statistics.median(per_round)
        low, high = _spread(per_round)
        checked.append(
            {
                "variant": variant,
                "baseline": baseline,
                "op": op,
                "goal": goal,
                "value": value,
                "spread": [low, high],
                "rounds": len(per_round),
                "met": None if op is None or goal is None else _COMPARE[op](value, goal),
            }
        )
    return checked


def _middle_half(samples: list[float], baseline: list[float]) -> str:
    """The interquartile range of the per-round ratios: how far one run's verdict can be
    trusted when the median lands near a target."""
    low, high = _spread([s / b for s, b in zip(samples, baseline, strict=True)])
    return f"{low:.2f}-{high:.2f}" + (" (all)" if len(samples) < 4 else "")


def _rss_mb(rss: dict[str, dict[str, int]], variant: str) -> float:
    return (rss[variant]["main_kib"] + rss[variant]["children_kib"]) / 1024


def table(results: dict[str, Any]) -> str:
    """The medians of every measured row, with kit_full / plain and its spread."""
    measured = [results[name] for name in UNITS if name in results]
    columns = [v for v in COLUMNS if any(v in row["median"] for row in measured)]
    lines = [
        "| measurement | unit | " + " | ".join(columns) + " | kit_full / plain | middle half of the rounds |",
        "|---|---|" + "---|" * len(columns) + "---|---|",
    ]
    for name, unit in UNITS.items():
        if name not in results:
            continue
        row = results[name]
        values = " | ".join(f"{row['median'][v]:,.1f}" if v in row["median"] else "-" for v in columns)
        spread = _middle_half(row["samples"]["kit_full"], row["samples"]["plain"])
        lines.append(f"| {name} | {unit} | {values} | {row['ratio']['kit_full']:.3f} | {spread} |")
    if "e2e_redis" in results:
        rss = results["e2e_redis"]["rss_kib"]
        values = " | ".join(f"{_rss_mb(rss, v):,.1f}" if v in rss else "-" for v in columns)
        extra = _rss_mb(rss, "kit_full") - _rss_mb(rss, "plain")
        lines.append(f"| worker RSS (main + 2 children), e2e_redis | MB | {values} | {extra:+.1f} MB | |")
    return "\n".join(lines)


def targets_table(results: dict[str, Any]) -> str:
    """Every target with the median of its per-round ratios, their middle half and the
    verdict; the ratios reported without a goal below them."""
    lines = [
        "| measurement | ratio (per round) | goal | median | middle half of the rounds | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for name in UNITS:
        if name not in results:
            continue
        for t in sorted(check_targets(name, results[name]), key=lambda t: t["goal"] is None):
            low, high = t["spread"]
            goal = "(reported)" if t["goal"] is None else f"{t['op']} {t['goal']:.2f}"
            verdict = "" if t["met"] is None else ("met" if t["met"] else "missed")
            every = " (all)" if t["rounds"] < 4 else ""
            lines.append(
                f"| {name} | {t['variant']} / {t['baseline']} | {goal} | {t['value']:.3f} "
                f"| {low:.2f}-{high:.2f}{every} | {verdict} |"
            )
    if "e2e_redis" in results:
        rss = results["e2e_redis"]["rss_kib"]
        extra = _rss_mb(rss, "kit_full") - _rss_mb(rss, "plain")
        verdict = "met" if extra <= RSS_GOAL_MB else "missed"
        lines.append(
            f"| worker RSS, e2e_redis | kit_full - plain (medians) | <= +{RSS_GOAL_MB:.0f} MB "
            f"| {extra:+.1f} MB | | {verdict} |"
        )
    return "\n".join(lines)


def cpu_split_table(results: dict[str, Any]) -> str:
    """Worker CPU per task by process: the main process (consumer) and the pool."""
    lines = [
        "| measurement | variant | main process µs/task | pool processes µs/task | total |",
        "|---|---|---|---|---|",
    ]
    for name in ("e2e_redis_cpu", "e2e_rabbitmq_cpu"):
        row = results.get(name)
        if not row:
            continue
        for variant in (v for v in COLUMNS if v in row["split"]):
            split = row["split"][variant]
            lines.append(
                f"| {name} | {variant} | {split['main']:,.1f} | {split['pool']:,.1f} "
                f"| {row['median'][variant]:,.1f} |"
            )
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    """The tables ``make bench`` prints and the performance page shows."""
    parts = [table(results), "", targets_table(results)]
    if any(name in results for name in ("e2e_redis_cpu", "e2e_rabbitmq_cpu")):
        parts += ["", cpu_split_table(results)]
    return "\n".join(parts)


def _steps(value: str) -> list[str]:
    chosen: list[str] = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        # An e2e CPU row comes with its throughput row: the same runs measure both.
        names = GROUPS.get(part, (part.removesuffix("_cpu"),))
        for name in names:
            if name not in STEPS:
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
        help="small N, one end-to-end round of plain, plain_events and kit_full (CI, under a minute)",
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
    parser.add_argument("--e2e-rounds", type=int, help="rounds of the end-to-end comparisons")
    parser.add_argument("--e2e-tasks", type=int, help="tasks per end-to-end run")
    parser.add_argument("--output", type=Path, help="JSON results file")
    parser.add_argument("--docs", type=Path, help="write the performance page here")
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="JSON",
        help="measure nothing: print the tables of a results file (and write --docs from it), "
        "e.g. after new instruction counts",
    )
    options = parser.parse_args()
    if options.from_results:
        recorded = json.loads(options.from_results.read_text())
        text = report(recorded)
        print(text)
        if options.docs:
            options.docs.write_text(performance_page(recorded))
        return 0
    quick = options.quick
    global PROCESSES
    PROCESSES = VariantProcesses((*VARIANTS, EVENTS) if quick else (*VARIANTS, EVENTS, UNIQUE))
    results: dict[str, Any] = {"machine": machine(), "quick": quick}
    # Many short rounds rather than a few long ones: each round's ratio compares
    # variants measured moments apart, and the median of many ignores noisy rounds.
    n_call, n_pub, n_e2e = (300, 300, 300) if quick else (1000, 250, 2000)
    rounds, e2e_rounds = (3, 1) if quick else (21, 7)
    rounds = options.rounds or rounds
    e2e_rounds = options.e2e_rounds or e2e_rounds
    n_e2e = options.e2e_tasks or n_e2e
    results["e2e_tasks"] = n_e2e
    # Publishing to a real broker is the noisiest measurement: short slices, many rounds.
    pub_rounds = options.rounds or (rounds if quick else 61)
    # Quick runs still start real workers on each broker, sample their CPU and fail on a
    # lost task, but only for the variants the targets compare with kit_full (events on
    # one broker): each worker start costs seconds, and CI has a minute.
    redis_variants = ("plain", EVENTS, "kit_full") if quick else (*E2E_VARIANTS, UNIQUE)
    rabbit_variants = ("plain", "kit_full") if quick else E2E_VARIANTS
    steps: dict[str, Callable[[], dict[str, dict[str, Any]]]] = {
        "apply_small": lambda: {"apply_small": bench_in_process(n_call, rounds, heavy=False, direct=False)},
        "apply_small_warning": lambda: {
            "apply_small_warning": bench_in_process(
                n_call, rounds, heavy=False, direct=False, log_level=logging.WARNING
            )
        },
        "apply_heavy": lambda: {
            "apply_heavy": bench_in_process(n_call // 3, rounds, heavy=True, direct=False)
        },
        "call_small": lambda: {"call_small": bench_in_process(n_call, rounds, heavy=False, direct=True)},
        "producer_redis": lambda: {"producer_redis": bench_producer(n_pub, pub_rounds)},
        "e2e_redis": lambda: end_to_end_rows("e2e_redis", REDIS_URL, n_e2e, e2e_rounds, redis_variants),
        "e2e_rabbitmq": lambda: end_to_end_rows("e2e_rabbitmq", AMQP_URL, n_e2e, e2e_rounds, rabbit_variants),
    }
    try:
        for name in options.only or STEPS:
            started = time.monotonic()
            results.update(steps[name]())
            print(f"{name}: done in {time.monotonic() - started:.1f}s", file=sys.stderr)
    except LostTasks as exc:
        print(f"LOST TASKS: {exc}", file=sys.stderr)
        return 1
    finally:
        PROCESSES.close()
    results["targets"] = {name: check_targets(name, results[name]) for name in UNITS if name in results}
    text = report(results)
    print(text)
    if options.output:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if options.docs:
        options.docs.write_text(performance_page(results))
    return 0


def end_to_end_rows(
    name: str, broker_url: str, n: int, rounds: int, variants: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """``name`` (throughput) and ``name_cpu`` (worker CPU per task), from the same runs."""
    rows = bench_end_to_end(broker_url, n, rounds, variants)
    return {name: rows["throughput"], f"{name}_cpu": rows["cpu"]}


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


def _verdicts(results: dict[str, Any]) -> str:
    """One sentence: how many targets this run met, and which it missed."""
    judged = [
        (name, t)
        for name in UNITS
        if name in results
        for t in check_targets(name, results[name])
        if t["met"] is not None
    ]
    missed = [f"`{name}` {t['variant']} / {t['baseline']}" for name, t in judged if not t["met"]]
    sentence = f"This run met {len(judged) - len(missed)} of its {len(judged)} ratio targets"
    return sentence + (f"; missed: {', '.join(missed)}." if missed else ".")


def performance_page(results: dict[str, Any]) -> str:
    m = results["machine"]
    tasks = results.get("e2e_tasks", 5000)
    rounds = len(results["e2e_redis"]["samples"]["plain"]) if "e2e_redis" in results else 0
    quick = (
        "\n**This page was written from a `--quick` run: one round, small N. Its numbers are "
        "not a verdict.**\n"
        if results.get("quick")
        else ""
    )
    return f"""# Performance

Measured by `make bench` (`benchmarks/run.py`) on {m["date"]}: Python {m["python"]},
Celery {m["celery"]}, pydantic {m["pydantic"]}, {m["cpus"]} CPUs ({m["platform"]}).
The machine is a shared two-core VM: other work ran beside the benchmark, so single
numbers are noisy; the ratios of variants measured side by side, and their spread over
the rounds, are what to read.
{quick}
- **plain**: a plain Celery task taking the three fields as arguments (no validation);
- **plain_events** (end to end and producer only): `plain` with Celery's task events on --
  `celery worker -E` (`worker_send_task_events=True`) and `task_send_sent_event=True` on
  the producer, what Flower and event-based Prometheus exporters need to count tasks;
- **pydantic**: Celery's own `pydantic=True`;
- **kit**: `@validated_task` (validation in the caller and on the worker);
- **kit_full**: `@validated_task` with `instrument(app)` fully on (JSON logs of every
  lifecycle step, Prometheus metrics, alerts, health), task events off;
- **kit_full+unique** (`e2e_redis` only): `kit_full` with `unique=Unique(on=("subject",))`,
  a fresh key per message: one Redis lock per task, one round trip on publish and one at
  the finish (the start's lease is sent without waiting; see [Unique tasks](uniqueness.md)).

## Targets

Since issue 16 the targets are end to end, on a real prefork worker at `-l INFO` with a
minimal task body, every variant in the same run:

- `kit_full` throughput at least **0.97** times plain Celery's, on Redis and on RabbitMQ;
- `kit_full` worker CPU per task at most **1.05** times plain Celery's;
- `kit_full` worker CPU per task at most **0.95** times `plain_events`': the kit gives a
  worker's task counts, durations and outcomes as Prometheus metrics, which plain Celery
  gets from task events only, so the kit must be clearly cheaper than turning them on
  ("clearly": at least five percent cheaper, a goal set before the first run);
- validation alone (`kit`) cheaper than `pydantic=True`: worker CPU per task end to end,
  and `apply()` in-process.

Each target is judged on the median of its per-round ratios; the middle half of those
ratios is shown beside it. A median within that band of its goal is not a verdict either
way: run again. The old in-process target (`kit_full` `apply()` within 1.10 times plain
Celery) is retired: it could not be met without dropping features (see "Where the time
goes"), and `apply()` is not where users pay. The `apply_*`, `call_small` and
`producer_redis` rows stay as information: they take about a minute and show where the
kit's per-call work is.

{_verdicts(results)}

{targets_table(results)}

## Results

{table(results)}

Each cell is the median over the rounds; `kit_full / plain` is the median of the
per-round ratios, with the middle half of those ratios beside it.

## How it is measured

**End to end** (`e2e_*`): for each variant and round, a fresh `celery worker` (prefork,
concurrency 2, prefetch 4, results ignored, `-l INFO`, output to a file, as a service
runs it) consumes {tasks:,} tasks that the variant's own process publishes through a real
broker; the task counts its completion in Redis, and a lost or duplicated task fails the
run. {rounds} rounds. The measured window opens after the worker has said it is ready and
idled {SETTLE} s, and closes when the last completion is counted: start-up and shutdown
are outside it. Throughput is tasks over the window's wall time.

**Worker CPU per task** is the CPU the whole worker spent in that window divided by the
tasks: user + system seconds, as the kernel accounts them, of the worker's main process
and of every process below it (`benchmarks/cpu.py`: `psutil`'s `cpu_times()`, which reads
`/proc/<pid>/stat` -- `utime` + `stime` of each live process, plus `cutime` + `cstime`,
the time of the children it has already reaped). The whole tree is sampled right before
and right after the window. Prefork keeps its two pool processes for the whole run (the
harness checks that the pool did not change); a replaced child would still be counted
once, in its parent's reaped time (`tests/test_benchmarks.py` checks both with a real
worker). The CPU of the broker, of the producer, and of whatever reads the events
(Flower) is not in it: for `plain_events` that leaves out the receiving side, so the
comparison favours plain Celery. The main process (the consumer: it reads, acks and
dispatches messages, and with `-E` sends `task-received`) and the pool (the task, its
signals, logs and metrics, and with `-E` `task-started` and `task-succeeded`) are shown
apart:

{cpu_split_table(results)}

Each variant logs as its users' workers do: plain Celery at `INFO` writes its "Task
... received" line in the consumer and "Task ... succeeded" in the pool; `kit_full`
writes the kit's JSON lines (`task started`, `task succeeded`) and turns Celery's
per-task lines off. The harness checks each run's log has its variant's per-task line.

**In-process and producer.** Each variant runs in **its own interpreter**
(`benchmarks/variant_process.py`), as it would in production: a plain Celery process
imports nothing of the kit, so it has none of the kit's signal receivers (Celery skips
sending a signal nobody receives), and it logs the way `celery worker -l INFO` logs --
Celery's "Task ... succeeded" line per task through the standard library. `kit_full`
logs the kit's JSON lifecycle lines instead. All lines go to `/dev/null`.
`apply_small_warning` runs every variant at `WARNING`, where no variant writes a line
per task: what is left is validation and instrumentation alone. `apply_*` and
`call_small` run `task.apply()` and `task(...)`; `apply_heavy` uses an order with 50
nested items. `producer_redis` publishes with `delay()` to Redis (validation,
serialisation, publish; `plain_events` also publishes a `task-sent` event per task).

The harness interleaves the variants (A B C D, D C B A, ...) over many short rounds, with
each pair a target compares side by side in every round (kit and pydantic, plain and
kit_full, kit_full and plain_events), so machine noise hits both alike.

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
  `root_id`) bound in structlog's ContextVars for the attempt and cleared after it:
  about eighteen ContextVar writes.
- **Two JSON lines** (`task started`, `task succeeded`), each written and flushed on its
  own so a hung task still shows its start, through structlog's production chain
  (`make_filtering_bound_logger`, `merge_contextvars`, `TimeStamper`, `JSONRenderer` on
  orjson), in place of Celery's one "Task ... succeeded" line. They are the largest part
  of `instrument()`'s cost in a pool process.
- **Nine metric value updates** (started, in progress up and down, outcome, the duration
  and queue-wait histograms' bucket and sum, last success) through prometheus-client,
  on label children resolved once; under prefork each is a write to the process's
  memory-mapped file.

Per publish `kit_full` adds a counter, the publish time header and the propagated
context header, and a `task enqueued` line at `DEBUG` only: plain Celery writes no line
per publish, and at `INFO` that line cost a producer about 80 µs of CPU per `delay()`
through the standard library's logging, more than a quarter of a publish. Turn off what you
do not need (`instrument(app, logging=False)`), or raise the log level to `WARNING` to
keep only problems.

`python -m benchmarks.pool_path VARIANT ...` runs just the pool process's per-task path
(Celery's `fast_trace_task` on real messages, in a process set up by the worker signals
the kit listens to) in a loop, without the broker, the pipe or a busy machine's noise. On
2026-12-08 (CPU µs per task, median of 7 rounds of 5,000; the task body counted
nothing): plain 47.0, `kit` 50.6, `kit+alerts` 59.7 (Celery's two signals and the
bridge's bookkeeping: the alert observer reads failures only, so no event is built for a
success), `kit+health` 70.8 (the two events of each attempt, too), `kit+metrics` 83.6,
`kit+logging` 81.6 (its two lines in place of Celery's one), `kit_full` 96.4. End to end
the same work costs about twice as much: a pool process waiting for its next task starts
it with cold caches (timed inside `fast_trace_task` on a real worker, `kit_full` added
90-120 µs per task).

In-process, these add up to more than a tenth of a bare `apply()`, which is why the old
in-process target was retired. End to end, the per-attempt work runs in the pool
processes (compare `kit_full`'s pool column with `kit`'s and `plain`'s above), while
`kit_full` workers skip Celery's "Task received" line in the consumer, the main process.
Task events (`-E`) cost three messages published per task (`task-received` from the
consumer, `task-started` and `task-succeeded` from the pool), each serialised and sent
to the broker, plus `task-sent` in the caller (`producer_redis`).

`apply_heavy` shows one cost that is Celery's: for an eager call, Celery's own "Task ...
succeeded" line writes `repr()` of the arguments, and a validated payload of 50 nested
models has an expensive `repr()`. `kit_full` turns that line off; `kit` without
`instrument()` keeps Celery's logging as it is.
"""


if __name__ == "__main__":
    sys.exit(main())
