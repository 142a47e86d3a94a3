"""celery_kit.health: verdicts on crafted state files, the atomic writer, the CLI contract."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_kit import ConfigurationError, instrument
from celery_kit.health import (
    ExitCode,
    StateFileError,
    Thresholds,
    evaluate,
    install,
    probe_file,
    read_state,
    write_state,
)
from celery_kit.health._state import SCHEMA_VERSION, process_start_stamp
from celery_kit.health._verdict import DEFAULT_WORKER_MAX_AGE, pid_alive

NOW = 10_000.0
ROOT = Path(__file__).resolve().parents[1]
T = Thresholds(max_age=10, stall_after=60, reconnect_grace=300, limit_slack=5)


def alive(pid: int, stamp: str | None) -> tuple[bool, str]:
    return True, ""


def worker(**fields: Any) -> dict[str, Any]:
    """A healthy, consuming, idle prefork worker as of ``NOW``; ``fields`` override."""
    state: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "kind": "worker",
        "pid": 4242,
        "start_stamp": "1",
        "phase": "consuming",
        "phase_since": NOW - 100,
        "consumed_once": True,
        "mono": NOW - 1,
        "accepted_total": 7,
        "accepted_changed": NOW - 100,
        "waiting_since": None,
        "executing": None,
        "active": 0,
        "reserved": 0,
        "waiting": 0,
        "free_slots": 2,
        "concurrency": 2,
        "oldest_active": None,
        "next_deadline": None,
    }
    state.update(fields)
    return state


def beat(**fields: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "kind": "beat",
        "pid": 4242,
        "start_stamp": "1",
        "phase": "running",
        "mono": NOW - 1,
        "max_interval": 5.0,
    }
    state.update(fields)
    return state


def verdict(state: dict[str, Any], probe: str = "live", t: Thresholds = T) -> ExitCode:
    return evaluate(state["kind"], probe, state, t, now=NOW, alive=alive).code


# -- worker: live ------------------------------------------------------------------------------


def test_a_consuming_worker_with_a_fresh_beat_passes_every_probe() -> None:
    for probe in ("live", "ready", "startup"):
        assert verdict(worker(), probe) is ExitCode.OK


def test_beat_age_boundary_is_inclusive() -> None:
    assert verdict(worker(mono=NOW - 10)) is ExitCode.OK
    assert verdict(worker(mono=NOW - 10.01)) is ExitCode.LOOP_STALE
    assert verdict(worker(mono=NOW - 10.01), "ready") is ExitCode.LOOP_STALE


def test_default_max_age_applies_without_the_flag() -> None:
    t = Thresholds()
    assert verdict(worker(mono=NOW - DEFAULT_WORKER_MAX_AGE), t=t) is ExitCode.OK
    assert verdict(worker(mono=NOW - DEFAULT_WORKER_MAX_AGE - 0.5), t=t) is ExitCode.LOOP_STALE


def test_a_dead_process_is_not_alive_whatever_the_file_says() -> None:
    state = worker()
    result = evaluate("worker", "live", state, T, now=NOW, alive=lambda pid, stamp: (False, "gone"))
    assert result.code is ExitCode.NOT_ALIVE
    assert result.reason == "gone"


def test_reconnecting_stays_live_within_the_grace_and_fails_after() -> None:
    state = worker(phase="reconnecting", phase_since=NOW - 300, mono=NOW - 300)
    assert verdict(state) is ExitCode.OK  # the stale beat does not matter while reconnecting
    assert verdict(state, "ready") is ExitCode.DEPENDENCY_DOWN
    assert verdict(state, "startup") is ExitCode.OK  # it did consume once
    assert verdict(worker(phase="reconnecting", phase_since=NOW - 300.5)) is ExitCode.DEPENDENCY_DOWN
    endless = Thresholds(max_age=10, reconnect_grace=float("inf"))
    assert verdict(worker(phase="reconnecting", phase_since=NOW - 1e6), t=endless) is ExitCode.OK


def test_starting_and_stopping_are_live_but_not_ready() -> None:
    starting = worker(phase="starting", consumed_once=False, mono=NOW - 500)
    assert verdict(starting) is ExitCode.OK
    assert verdict(starting, "ready") is ExitCode.NOT_READY
    assert verdict(starting, "startup") is ExitCode.NOT_READY
    stopping = worker(phase="stopping")
    assert verdict(stopping) is ExitCode.OK
    assert verdict(stopping, "ready") is ExitCode.NOT_READY


def test_an_unknown_phase_is_not_ready() -> None:
    assert verdict(worker(phase="dancing")) is ExitCode.NOT_READY


def test_stalled_pool_boundary() -> None:
    stalled = {"waiting": 2, "free_slots": 2, "waiting_since": NOW - 60, "accepted_changed": NOW - 200}
    assert verdict(worker(**stalled)) is ExitCode.POOL_STALLED
    assert verdict(worker(**stalled), "ready") is ExitCode.POOL_STALLED
    assert verdict(worker(**{**stalled, "waiting_since": NOW - 59.9})) is ExitCode.OK
    # The counter moved recently: the pool is taking work, slowly.
    assert verdict(worker(**{**stalled, "accepted_changed": NOW - 30})) is ExitCode.OK
    # No free slot: every process is busy, which is not a stall.
    assert verdict(worker(**{**stalled, "free_slots": 0})) is ExitCode.OK
    assert verdict(worker(**{**stalled, "waiting": 0})) is ExitCode.OK


def test_a_task_past_its_time_limit_fails_live_after_the_slack() -> None:
    def running(age: float, limit: float | None) -> dict[str, Any]:
        entry = {"task": "t.x", "id": "1", "since": NOW - age, "time_limit": limit}
        return worker(active=1, free_slots=1, oldest_active=entry, next_deadline=entry if limit else None)

    assert verdict(running(35, 30)) is ExitCode.OK
    assert verdict(running(35.1, 30)) is ExitCode.POOL_STALLED
    assert verdict(running(10_000, None)) is ExitCode.OK  # no limit, no max_task_runtime
    capped = Thresholds(max_age=10, max_task_runtime=100, limit_slack=0)
    assert verdict(running(100, None), t=capped) is ExitCode.OK
    assert verdict(running(100.5, None), t=capped) is ExitCode.POOL_STALLED
    assert verdict(running(100.5, 500), t=capped) is ExitCode.POOL_STALLED  # the smaller limit wins
    result = evaluate("worker", "live", running(100.5, None), capped, now=NOW, alive=alive)
    assert "t.x" in result.reason
    assert "max_task_runtime" in result.reason


def test_the_earliest_deadline_counts_not_only_the_oldest_task() -> None:
    oldest = {"task": "t.long", "id": "1", "since": NOW - 50, "time_limit": 3600}
    short = {"task": "t.short", "id": "2", "since": NOW - 20, "time_limit": 10}
    result = evaluate(
        "worker", "live", worker(oldest_active=oldest, next_deadline=short), T, now=NOW, alive=alive
    )
    assert result.code is ExitCode.POOL_STALLED
    assert "t.short" in result.reason


def test_solo_busy_within_its_limit_is_live_and_ready_then_fails() -> None:
    def executing(age: float) -> dict[str, Any]:
        entry = {"task": "t.solo", "id": "1", "since": NOW - age, "time_limit": 20}
        return worker(pool="solo", mono=NOW - age, executing=entry)

    assert verdict(executing(25)) is ExitCode.OK  # loop blocked 25 s, but by a task within 20+5
    assert verdict(executing(25), "ready") is ExitCode.OK
    assert verdict(executing(25.1)) is ExitCode.POOL_STALLED


# -- beat --------------------------------------------------------------------------------------


def test_beat_staleness_is_twice_max_interval_with_a_floor_plus_grace() -> None:
    t = Thresholds(beat_floor=60, beat_grace=10)
    assert verdict(beat(max_interval=5, mono=NOW - 70), t=t) is ExitCode.OK  # floor 60 + 10
    assert verdict(beat(max_interval=5, mono=NOW - 70.1), t=t) is ExitCode.LOOP_STALE
    assert verdict(beat(max_interval=300, mono=NOW - 610), t=t) is ExitCode.OK  # 2 x 300 + 10
    assert verdict(beat(max_interval=300, mono=NOW - 610.1), t=t) is ExitCode.LOOP_STALE
    explicit = Thresholds(max_age=3)
    assert verdict(beat(mono=NOW - 3.1), t=explicit) is ExitCode.LOOP_STALE


def test_a_standby_beat_is_live_and_started_but_not_ready() -> None:
    standby = beat(phase="standby")
    assert verdict(standby) is ExitCode.OK
    assert verdict(standby, "startup") is ExitCode.OK
    assert verdict(standby, "ready") is ExitCode.NOT_READY
    assert verdict(beat(phase="standby", mono=NOW - 1000)) is ExitCode.LOOP_STALE  # frozen standby
    assert verdict(beat(), "ready") is ExitCode.OK


# -- files -------------------------------------------------------------------------------------


def test_the_writer_replaces_the_file_atomically(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "state.json")  # the directory is created on demand
    stop = threading.Event()
    seen: list[int] = []
    errors: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(read_state(path, "worker")["n"])
            except StateFileError as exc:
                if "no state file" not in str(exc):
                    errors.append(str(exc))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(300):
            write_state(path, {"v": SCHEMA_VERSION, "kind": "worker", "n": n, "pad": "x" * 20_000})
    finally:
        stop.set()
        reader.join()
    assert errors == []  # never a half-written file
    assert seen
    assert seen == sorted(seen)
    assert read_state(path, "worker")["n"] == 299
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["state.json"]  # no temp files left
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_a_failed_replace_leaves_no_temp_file(tmp_path: Path) -> None:
    blocker = tmp_path / "state.json"  # a non-empty directory where the file should go
    blocker.mkdir()
    (blocker / "keep").write_text("x")
    with pytest.raises(IsADirectoryError):
        write_state(str(blocker), {"v": SCHEMA_VERSION, "n": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert (blocker / "keep").read_text() == "x"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no state file"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a celery_kit health state file"),
        (b'{"v": 999, "kind": "worker"}', "not a celery_kit health state file"),
    ],
)
def test_missing_or_corrupt_files_are_a_clear_not_alive_verdict(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "state.json"
    if content is not None:
        path.write_bytes(content)
    result = probe_file("worker", "live", str(path), T)
    assert result.code is ExitCode.NOT_ALIVE
    assert message in result.reason
    assert result.details["file"] == str(path)


def test_a_beat_file_given_to_the_worker_probe_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "beat.json"
    write_state(str(path), beat(pid=os.getpid(), start_stamp=process_start_stamp(os.getpid())))
    result = probe_file("worker", "live", str(path), T)
    assert result.code is ExitCode.USAGE
    assert "beat live" in result.reason


def test_pid_checks_use_the_real_process_table() -> None:
    me = os.getpid()
    assert pid_alive(me, process_start_stamp(me)) == (True, "")
    reused = pid_alive(me, "not-my-start-time")  # same pid, another process's start stamp
    assert reused[0] is False
    assert "another process" in reused[1]
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gone = pid_alive(child.pid, None)
    assert gone[0] is False


# -- install -----------------------------------------------------------------------------------


def test_install_is_idempotent_and_adds_the_consumer_step(app: Celery, tmp_path: Path) -> None:
    setup = install(app, state_file=str(tmp_path / "%n.json"))
    assert install(app) is setup
    assert any(getattr(s, "__name__", "") == "Heartbeat" for s in app.steps["consumer"])
    assert setup.worker_file("w1@box") == str(tmp_path / "w1.json")


def test_instrument_installs_health_unless_told_not_to(app: Celery, unique: str) -> None:
    wired = instrument(app, logging=False, metrics=False, health_file="/tmp/x-%n.json")
    assert wired.health is not None
    assert wired.health.state_file == "/tmp/x-%n.json"
    other = Celery(f"other-{unique}", broker="memory://", set_as_current=False)
    assert instrument(other, logging=False, metrics=False, health=False).health is None


@pytest.mark.parametrize("interval", [0, -1, float("nan"), float("inf")])
def test_a_bad_interval_is_refused_with_a_fix(app: Celery, interval: float) -> None:
    with pytest.raises(ConfigurationError, match="positive number of seconds"):
        install(app, interval=interval)


# -- CLI ---------------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery_kit.health", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", **(env or {})},
        timeout=60,
        check=False,
    )


def own_state(**fields: Any) -> dict[str, Any]:
    """A state of this very process, so the CLI's real pid check passes."""
    now = time.monotonic()
    base = {
        "pid": os.getpid(),
        "start_stamp": process_start_stamp(os.getpid()),
        "phase_since": now - 100,
        "mono": now,
        "accepted_changed": now - 100,
    }
    return worker(**{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "args", "code"),
    [
        ({}, ("live",), 0),
        ({"phase": "starting", "consumed_once": False}, ("startup",), 4),
        ({"mono": -1.0}, ("live", "--max-age", "5"), 2),
        ({"phase": "reconnecting"}, ("ready",), 5),
        ({"phase": "reconnecting"}, ("live", "--reconnect-grace", "0"), 5),
    ],
)
def test_cli_exit_codes_and_one_json_line(
    tmp_path: Path, fields: dict[str, Any], args: tuple[str, ...], code: int
) -> None:
    path = tmp_path / "w.json"
    write_state(str(path), own_state(**fields))
    done = run_cli("worker", *args, "--file", str(path))
    assert done.returncode == code, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    answer = json.loads(lines[0])
    assert answer["code"] == code
    assert answer["ok"] is (code == 0)
    assert answer["reason"]


def test_cli_reads_the_file_named_by_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "env.json"
    write_state(str(path), own_state())
    done = run_cli("worker", "live", env={"CELERY_KIT_HEALTH_FILE": str(path)})
    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout)["file"] == str(path)


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("worker",),
        ("worker", "alive"),
        ("worker", "live", "--max-age", "-3"),
        ("worker", "live", "--max-age", "soon"),
        ("worker", "live", "--bogus"),
        ("cluster", "live"),
    ],
)
def test_cli_usage_errors_exit_64_with_a_hint(args: tuple[str, ...]) -> None:
    done = run_cli(*args)
    assert done.returncode == 64
    answer = json.loads(done.stdout)
    assert answer["code"] == 64
    assert "--help" in answer["reason"]
    assert done.stderr.strip()


def test_check_with_an_unimportable_app_is_a_usage_error() -> None:
    done = run_cli("check", "-A", "no_such_module_for_celery_kit")
    assert done.returncode == 64
    assert "cannot load the app" in json.loads(done.stdout)["reason"]


#: What the probe never imports: Celery's stack, pydantic, and the Celery-side health modules.
NEVER_IMPORTED = {
    "amqp",
    "billiard",
    "celery",
    "kombu",
    "prometheus_client",
    "pydantic",
    "pydantic_core",
    "pydantic_settings",
    "redis",
    "structlog",
    "tenacity",
    "vine",
    "celery_kit.health._beat",
    "celery_kit.health._check",
    "celery_kit.health._setup",
    "celery_kit.health._step",
}
#: The app a worker container names; importable here, so a probe that imported it would succeed.
APP_MODULE = "tests.integration.health_app"


def probe_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a worker container: the app, its broker, the state files."""
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        "CELERY_APP": APP_MODULE,
        "KIT_HEALTH_BROKER_URL": "redis://127.0.0.1:1/0",
        "KIT_HEALTH_QUEUE": "unused",
        "CELERY_KIT_HEALTH_FILE": str(tmp_path / "worker.json"),
        "CELERY_KIT_HEALTH_BEAT_FILE": str(tmp_path / "beat.json"),
    }


#: ``python -m celery_kit.health ARGS`` as ``-m`` runs it (runpy), reporting at exit every
#: module loaded meanwhile. ``-X importtime`` alone does not see a module loaded with
#: ``importlib.import_module`` (how Celery loads ``-A`` apps); ``sys.modules`` does.
WATCHED_PROBE = (
    "import atexit, runpy, sys\n"
    "before = set(sys.modules)\n"
    "atexit.register(lambda: print('loaded:', *sorted(set(sys.modules) - before), file=sys.stderr))\n"
    "runpy.run_module('celery_kit.health', run_name='__main__', alter_sys=True)\n"
)


def imported_by(stderr: str, *, watched: bool = True) -> set[str]:
    """Every module an ``-X importtime`` run (of :data:`WATCHED_PROBE`) reports."""
    names: set[str] = set()
    for line in stderr.splitlines():
        if line.startswith("import time:"):
            names.add(line.rsplit("|", 1)[-1].strip())
        elif line.startswith("loaded:"):
            names.update(line.split()[1:])
            watched = False
    assert not watched, f"no at-exit report of the loaded modules: {stderr[-2000:]}"
    return names - {"imported package"}


@pytest.fixture(scope="module")
def interpreter_startup(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """What ``python -c pass`` imports in the same environment (site, .pth hooks)."""
    env = probe_env(tmp_path_factory.mktemp("startup"))
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return imported_by(done.stderr, watched=False)


def assert_standard_library_only(imported: set[str], startup: set[str]) -> None:
    assert "celery_kit.health._cli" in imported  # the check sees the real import lines
    assert APP_MODULE not in imported
    assert {m for m in imported if m.split(".")[0] == "tests"} == set()
    forbidden = {m for m in imported if m in NEVER_IMPORTED or m.split(".")[0] in NEVER_IMPORTED}
    assert forbidden == set()
    # Beyond the interpreter's own start, only the standard library and celery_kit itself.
    # A name that resolves to nothing was only looked up (``copy`` asks for Jython's ``org``).
    third_party = {
        m
        for m in imported - startup
        if (top := m.split(".")[0]) not in sys.stdlib_module_names
        and top != "celery_kit"
        and importlib.util.find_spec(top) is not None
    }
    assert third_party == set()


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("worker", "live"), 0),
        (("worker", "ready"), 0),
        (("worker", "startup"), 0),
        (("beat", "live"), 0),
        (("beat", "ready"), 0),
        (("beat", "startup"), 0),
        (("worker", "live", "--file", "/nonexistent/celery-kit/worker.json"), 1),
        (("worker", "live", "--max-age", "soon"), 64),
    ],
)
def test_the_probe_imports_neither_celery_nor_pydantic_nor_the_app(
    tmp_path: Path, interpreter_startup: set[str], args: tuple[str, ...], code: int
) -> None:
    env = probe_env(tmp_path)
    write_state(env["CELERY_KIT_HEALTH_FILE"], own_state())
    me = os.getpid()
    write_state(
        env["CELERY_KIT_HEALTH_BEAT_FILE"],
        beat(pid=me, start_stamp=process_start_stamp(me), mono=time.monotonic()),
    )
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", WATCHED_PROBE, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == code, done.stdout + done.stderr[-2000:]
    assert json.loads(done.stdout)["code"] == code
    assert_standard_library_only(imported_by(done.stderr), interpreter_startup)


def test_serve_imports_neither_celery_nor_pydantic_nor_the_app(
    tmp_path: Path, interpreter_startup: set[str]
) -> None:
    env = probe_env(tmp_path)
    write_state(env["CELERY_KIT_HEALTH_FILE"], own_state())
    server = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-c", WATCHED_PROBE, "serve", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert server.stderr is not None
    lines: list[str] = []
    try:
        while not (lines and lines[-1].startswith("{")):
            line = server.stderr.readline()
            assert line, "".join(lines[-20:])
            lines.append(line)
        base = json.loads(lines[-1])["serving"]
        for path in ("/livez", "/readyz", "/startupz", "/status"):  # every handler path runs
            with urllib.request.urlopen(base + path, timeout=10) as response:
                assert response.status == 200
    finally:
        server.send_signal(signal.SIGINT)  # a clean exit, so the at-exit report is written
        rest = server.communicate(timeout=10)[1]
    assert server.returncode == 0, rest[-2000:]
    imported = imported_by("".join(lines) + rest)
    assert "celery_kit.health._http" in imported
    assert_standard_library_only(imported, interpreter_startup)


def test_walking_the_package_before_first_use_imports_nothing() -> None:
    """freezegun's ``freeze_time()`` getattr()s every name in every module's dir(): that
    must not import the kit (its pydantic models would be built with a fake datetime)."""
    code = (
        "import sys, celery_kit\n"
        "for name in dir(celery_kit):\n"
        "    getattr(celery_kit, name)\n"
        "assert 'celery_kit._instrument' not in sys.modules\n"
        "assert 'pydantic' not in sys.modules\n"
        "print('ok')\n"
    )
    _prints_ok(code)


def _prints_ok(code: str) -> None:
    """Run ``code`` in a fresh interpreter (nothing of the kit imported yet); it prints ok."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_the_package_still_loads_its_public_names_lazily() -> None:
    code = (
        "import sys, celery_kit\n"
        "assert 'celery' not in sys.modules\n"
        "from celery_kit import ValidatedTask, instrument\n"
        "assert 'celery_kit._bridge' in sys.modules\n"
        "assert instrument.__module__ == 'celery_kit'\n"
        "assert set(celery_kit.__all__) <= set(dir(celery_kit))\n"
        "import celery_kit.health as h\n"
        "assert h.health_check.__name__ == 'health_check'\n"
        "print('ok')\n"
    )
    _prints_ok(code)


def test_a_solo_worker_writes_its_state_for_long_tasks_only(tmp_path: Path) -> None:
    """A write per task (an atomic replace) doubled a short task's cost on solo workers;
    only a task that runs long enough to matter to a probe is written."""
    from celery_kit.health._step import EXECUTING_WRITE_DELAY, WorkerHeart

    path = tmp_path / "worker.json"
    heart = WorkerHeart(str(path), node="w@h", pool="solo", interval=2.0, default_limit=None)

    class Task:
        name = "t.short"
        time_limit = 5
        soft_time_limit = None
        request = None

    for i in range(200):
        heart.task_started(Task(), f"id-{i}")
        heart.task_finished()
    time.sleep(EXECUTING_WRITE_DELAY * 3)
    assert not path.exists()  # 200 short tasks, no write

    heart.task_started(Task(), "long")
    deadline = time.monotonic() + 5
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    state = json.loads(path.read_text())
    assert state["executing"]["id"] == "long"
    assert state["executing"]["time_limit"] == 5
    heart.task_finished()  # a task the file showed is written off at once
    assert json.loads(path.read_text())["executing"] is None
