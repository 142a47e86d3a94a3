"""instrument(app): idempotent wiring, and the config check at worker start."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_kit import ConfigurationError, dispatcher_for, instrument


def test_instrument_is_idempotent(app: Celery) -> None:
    first = instrument(app, logging=False, metrics=False)
    observers = dispatcher_for(app).observers
    assert instrument(app, logging=False, metrics=False) is first
    assert dispatcher_for(app).observers == observers


def test_instrument_again_with_other_options_is_refused(app: Celery) -> None:
    instrument(app, logging=False, metrics=False, alerts=None)
    with pytest.raises(ConfigurationError, match=r"already instrumented, with other logging, metrics"):
        instrument(app, alerts=None)
    with pytest.raises(ConfigurationError, match="log_context"):
        instrument(app, logging=False, metrics=False, alerts=None, log_context=("tenant",))


def test_dangerous_settings_are_reported_when_the_worker_starts(app: Celery) -> None:
    app.conf.update(accept_content=["json", "pickle"], task_soft_time_limit=None, task_time_limit=None)
    instrument(app, logging=False, metrics=False, alerts=None)
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("celery_kit")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)  # the embedded worker sets the root logger to ERROR
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            pass
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    text = "\n".join(r.getMessage() for r in records)
    assert "pickle-accepted" in text
    assert "no-time-limits" in text


def test_the_check_only_runs_for_its_own_app(app: Celery) -> None:
    app.conf.update(accept_content=["json", "pickle"])
    instrument(app, logging=False, metrics=False, alerts=None)
    clean = Celery("clean", broker="memory://", set_as_current=False)
    clean.conf.update(task_soft_time_limit=5, task_time_limit=10)
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("celery_kit")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with start_worker(clean, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            pass
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [r.getMessage() for r in records if "pickle" in r.getMessage()] == []


def _run(script: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter: process-wide state is what is under test."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


_SIGNALS_CONNECTED = """
    from celery import signals
    from celery.utils.dispatch import Signal

    def connected():
        return sorted(
            name for name in dir(signals)
            if isinstance(getattr(signals, name), Signal) and getattr(signals, name).receivers
        )
"""


def test_importing_the_kit_connects_nothing_and_changes_no_logger() -> None:
    result = _run(
        _SIGNALS_CONNECTED
        + """
    import atexit, logging, os
    before = {n: logging.getLogger(n).level for n in ("celery.app.trace", "celery.worker.strategy")}
    import celery_kit, celery_kit.logging, celery_kit.metrics, celery_kit.alerts, celery_kit.health
    import celery_kit.presets, celery_kit.testing
    for name in celery_kit.__all__:
        getattr(celery_kit, name)
    after = {n: logging.getLogger(n).level for n in before}
    assert connected() == [], connected()
    assert after == before, after
    assert not logging.getLogger().handlers
    print("ok")
    """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_producer_at_warning_writes_nothing() -> None:
    """An instrumented producer logs through the standard library: a script configured at
    WARNING writes nothing, to stdout above all (a CLI's stdout may be a pipe it reads)."""
    result = _run(
        """
    import logging
    logging.basicConfig(level=logging.WARNING)
    from celery import Celery
    from celery_kit import instrument, validated_task

    app = Celery("producer", broker="memory://localhost/", backend="cache+memory://")
    instrument(app, metrics=False, alerts=None, health=False)

    @validated_task(app, time_limit=10)
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(1, 2)
    assert add.apply((2, 3)).get() == 5
    """
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")


def test_a_producer_logs_its_enqueues_at_debug_through_the_standard_library() -> None:
    result = _run(
        """
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s|%(message)s|%(task_id)s")
    from celery import Celery
    from celery_kit import instrument, validated_task

    app = Celery("producer", broker="memory://localhost/")
    instrument(app, metrics=False, alerts=None, health=False)

    @validated_task(app, name="p.add", time_limit=10)
    def add(x: int, y: int) -> int:
        return x + y

    print("at info:", add.delay(1, 2).id, file=sys.stderr)
    logging.getLogger("celery_kit.tasks").setLevel(logging.DEBUG)  # as docs/observability.md says
    print("at debug:", add.delay(1, 2).id, file=sys.stderr)
    """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    (at_info,) = [line.split()[-1] for line in lines if line.startswith("at info:")]
    (at_debug,) = [line.split()[-1] for line in lines if line.startswith("at debug:")]
    enqueued = [line for line in lines if line.startswith("celery_kit.tasks|task enqueued|")]
    # Plain Celery writes nothing per publish; a producer at INFO gets no line either.
    assert enqueued == [f"celery_kit.tasks|task enqueued|{at_debug}"], result.stderr
    assert at_info not in result.stderr.replace(f"at info: {at_info}", "")


def test_uninstrument_undoes_instrument() -> None:
    result = _run(
        _SIGNALS_CONNECTED
        + """
    from celery import Celery
    from celery_kit import Observer, instrument, uninstrument, validated_task
    from celery_kit._metrics_worker import MetricsServer
    from celery_kit.health import Heartbeat

    seen = []

    class Seen(Observer):
        def on_succeeded(self, event):
            seen.append(event.task_name)

    app = Celery("a", broker="memory://", backend="cache+memory://")
    other = Celery("b", broker="memory://", backend="cache+memory://")

    @validated_task(app, name="a.ok", time_limit=10)
    def ok() -> None: ...

    instrument(app, observers=[Seen()], metrics_port=0, alerts=None)
    instrument(other, logging=False, metrics=False, alerts=None, health=False)
    assert "setup_logging" in connected() and "task_postrun" in connected()
    assert MetricsServer in app.steps["worker"] and Heartbeat in app.steps["consumer"]
    ok.apply()
    assert seen == ["a.ok"]

    uninstrument(app)
    ok.apply()
    assert seen == ["a.ok"], seen  # no more events for the app
    assert MetricsServer not in app.steps["worker"] and Heartbeat not in app.steps["consumer"]
    assert "setup_logging" not in connected()  # no app logs any more: Celery's own logging
    assert "task_postrun" in connected()  # the other app is still observed
    uninstrument(other)
    assert connected() == [], connected()
    uninstrument(other)  # idempotent

    again = instrument(app, logging=False, metrics=False, alerts=None, health=False, observers=[Seen()])
    ok.apply()
    assert seen == ["a.ok", "a.ok"]
    print("ok")
    """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_apps_are_isolated(app: Celery) -> None:
    """Observers, options and dispatchers are per app: what one app gets, another never sees."""
    from celery_kit import Observer, TaskEvent, uninstrument, validated_task

    class Names(Observer):
        def __init__(self) -> None:
            self.names: list[str] = []

        def on_succeeded(self, event: TaskEvent) -> None:
            self.names.append(event.task_name)

    other = Celery("isolated-b", broker="memory://", backend="cache+memory://", set_as_current=False)
    mine, theirs = Names(), Names()
    first = instrument(app, logging=False, metrics=False, alerts=None, health=False, observers=[mine])
    second = instrument(other, metrics=False, alerts=None, health=False, observers=[theirs], json_logs=True)
    try:

        @validated_task(app, shared=False, name="iso.a")
        def a() -> None: ...

        @validated_task(other, shared=False, name="iso.b")
        def b() -> None: ...

        a.apply()
        b.apply()
        assert (mine.names, theirs.names) == (["iso.a"], ["iso.b"])
        assert dispatcher_for(app) is not dispatcher_for(other)
        assert first.options["json_logs"] is None  # the second app's choice is its own
        assert second.log_observer is not None
        assert first.log_observer is None
    finally:
        uninstrument(other)
        uninstrument(app)


def test_a_refused_instrument_leaves_nothing_connected() -> None:
    result = _run(
        _SIGNALS_CONNECTED
        + """
    from celery import Celery
    from celery_kit import ConfigurationError, instrument
    from celery_kit._dispatch import known_apps
    from celery_kit.metrics import TaskMetrics

    app = Celery("refused", broker="memory://localhost/")
    app.conf.celery_kit_alert_sinks = ["nosuch://x"]
    try:
        instrument(app)
    except ConfigurationError:
        pass
    else:
        raise SystemExit("instrument() accepted an unknown sink")
    assert connected() == [], connected()
    assert known_apps() == []
    assert not app.steps["worker"] and not app.steps["consumer"], app.steps
    print("ok")
    """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_messages_published_by_name_reach_only_the_app_that_registers_the_task() -> None:
    from celery_kit import Observer, TaskEvent, uninstrument

    class Published(Observer):
        def __init__(self) -> None:
            self.names: list[str] = []

        def on_published(self, event: TaskEvent) -> None:
            self.names.append(event.task_name)

    a = Celery("pub-a", broker="memory://localhost/", set_as_current=False)
    b = Celery("pub-b", broker="memory://localhost/")  # the current app
    seen_a, seen_b = Published(), Published()
    instrument(a, metrics=False, alerts=None, health=False, observers=[seen_a], log_context=("tenant",))
    instrument(b, metrics=False, alerts=None, health=False, observers=[seen_b])
    try:

        @a.task(name="pub.plain_a", shared=False)  # type: ignore[untyped-decorator]
        def plain_a() -> None: ...

        a.finalize()
        b.finalize()
        plain_a.delay()  # a plain (not kit) task of a
        a.send_task("pub.unknown")  # registered nowhere: no way to tell whose
        assert seen_a.names == ["pub.plain_a"]
        assert seen_b.names == []
    finally:
        uninstrument(b)
        uninstrument(a)
        a.close()
        b.close()
