"""``instrument(app)``: wire the observers into one app, once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery import Celery
from prometheus_client import CollectorRegistry

from . import _bridge  # noqa: F401  -- tasks and instrument need the signal receivers
from ._errors import ConfigurationError
from ._events import dispatcher_for
from ._observer import Observer
from .alerts import Alerter, Alerting, AlertObserver, sinks_from_urls
from .metrics import DEFAULT_DURATION_BUCKETS, DEFAULT_QUEUE_WAIT_BUCKETS, MetricsSetup

if TYPE_CHECKING:
    from .health import HealthSetup

__all__ = ["Instrumentation", "instrument"]

#: App settings read when the keyword is not given.
METRICS_PORT_SETTING = "celery_kit_metrics_port"
METRICS_HOST_SETTING = "celery_kit_metrics_host"
DEFAULT_METRICS_PORT = 9808
ALERT_SINKS_SETTING = "celery_kit_alert_sinks"
#: ``app.conf`` keys ``KitSettings.celery_config()`` fills: the shared alert throttle's
#: Redis and the heartbeat file.
ALERT_REDIS_SETTING = "celery_kit_alert_redis_url"
HEALTH_FILE_SETTING = "celery_kit_health_file"
DEAD_LETTERS_SETTING = "celery_kit_dead_letters"


_DEFAULT: Any = object()


@dataclass(frozen=True)
class Instrumentation:
    """What :func:`instrument` wired into an app."""

    app: Celery
    logging: bool
    metrics: MetricsSetup | None
    alerts: AlertObserver | None = None
    health: HealthSetup | None = None
    #: The user's own observers (``observers=``).
    observers: tuple[Observer, ...] = ()
    #: The options it was called with: a second call must give the same.
    options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def instrument(
    app: Celery,
    *,
    logging: bool = True,
    metrics: bool = True,
    alerts: Alerting | Sequence[Alerter] | None = _DEFAULT,
    json_logs: bool | None = None,
    log_context: Iterable[str] = ("request_id", "correlation_id"),
    metrics_port: int | None = None,
    metrics_host: str | None = None,
    metrics_prefix: str = "celery",
    metrics_registry: CollectorRegistry | None = None,
    duration_buckets: Sequence[float] = DEFAULT_DURATION_BUCKETS,
    queue_wait_buckets: Sequence[float] = DEFAULT_QUEUE_WAIT_BUCKETS,
    metrics_dir: str | None = None,
    health: bool = True,
    health_file: str | None = None,
    observers: Iterable[Observer] = (),
    dead_letters: bool | None = None,
) -> Instrumentation:
    """Wire structured logging and Prometheus metrics into ``app``; idempotent.

    Call it where the app is created, so workers and producers both get it. Calling it
    again with the same options returns the first :class:`Instrumentation`; with other
    options it raises :class:`~celery_kit.ConfigurationError` (one app, one configuration).

    Args:
        logging: take over worker logging (structlog, JSON lines unless on a terminal;
            ``json_logs`` forces either), log each task lifecycle step once, and carry the
            ``log_context`` keys of the producer's structlog context to the worker.
        metrics: count task events. Workers serve them on ``metrics_host:metrics_port``
            (default ``127.0.0.1:9808``, or the ``celery_kit_metrics_port`` /
            ``celery_kit_metrics_host`` settings; port 0 turns the endpoint off) from the
            main process only. Producers count into ``metrics_registry`` (default: the
            prometheus-client default registry).
        metrics_dir: base directory for the prefork pool's multiprocess files (default:
            the system temp directory).
        alerts: an :class:`~celery_kit.alerts.Alerting` configuration, or a list of sinks
            (default: the ``celery_kit_alert_sinks`` setting -- see
            :func:`~celery_kit.alerts.sinks_from_urls` -- else log events only); ``None``
            or ``[]`` turns alerting off.
        health: write the heartbeat state file the probes read
            (``python -m celery_kit.health worker live``), from workers and beat.
        health_file: where the worker writes it (``%n`` expands to the node name);
            default ``$CELERY_KIT_HEALTH_FILE`` or a per-node file in the temp directory.
        observers: your own :class:`~celery_kit.Observer` instances, fed the same
            classified events as the kit's own (see the events guide).
        dead_letters: keep every message the kit gives up on, replayable (see
            :mod:`celery_kit.deadletter`); default: the ``celery_kit_dead_letters``
            setting, else off.

    Raises:
        ConfigurationError: ``app`` is already instrumented with other options, or an
            observer is not an :class:`~celery_kit.Observer`.
    """
    user_observers = tuple(observers)
    for observer in user_observers:
        if not isinstance(observer, Observer):
            raise ConfigurationError(
                f"instrument(observers=...) takes celery_kit.Observer instances, got {observer!r}; "
                "subclass celery_kit.Observer and override the hooks you need."
            )
    options = {
        "logging": logging,
        "metrics": metrics,
        "alerts": alerts,
        "json_logs": json_logs,
        "log_context": tuple(log_context),
        "metrics_port": metrics_port,
        "metrics_host": metrics_host,
        "metrics_prefix": metrics_prefix,
        "metrics_registry": metrics_registry,
        "duration_buckets": tuple(duration_buckets),
        "queue_wait_buckets": tuple(queue_wait_buckets),
        "metrics_dir": metrics_dir,
        "health": health,
        "health_file": health_file,
        "observers": user_observers,
        "dead_letters": dead_letters,
    }
    existing: Instrumentation | None = getattr(app, "_celery_kit_instrumentation", None)
    if existing is not None:
        changed = sorted(
            k for k, v in options.items() if k not in existing.options or existing.options[k] != v
        )
        if changed:
            raise ConfigurationError(
                f"app {app.main!r} is already instrumented, with other {', '.join(changed)}; "
                "call instrument() once per app with the options it needs."
            )
        return existing
    dispatcher = dispatcher_for(app)
    metrics_setup = None
    if logging:
        from . import logging as kit_logging

        kit_logging.install(json=json_logs, context_keys=log_context)
        dispatcher.subscribe(kit_logging.LoggingObserver())
    if metrics:
        from . import metrics as kit_metrics

        conf: Any = app.conf
        port = (
            metrics_port if metrics_port is not None else conf.get(METRICS_PORT_SETTING, DEFAULT_METRICS_PORT)
        )
        host = metrics_host or conf.get(METRICS_HOST_SETTING, "127.0.0.1")
        metrics_setup = kit_metrics.install(
            app,
            port=int(port or 0),
            host=str(host),
            prefix=metrics_prefix,
            registry=metrics_registry,
            duration_buckets=duration_buckets,
            queue_wait_buckets=queue_wait_buckets,
            multiprocess_dir=metrics_dir,
        )
        dispatcher.subscribe(metrics_setup)
    alert_observer = None
    if alerts is _DEFAULT:
        configured = app.conf.get(ALERT_SINKS_SETTING)
        redis_url = _secret(app.conf.get(ALERT_REDIS_SETTING))
        sinks = sinks_from_urls(configured) if configured else None
        alerts = (
            Alerting(redis_url=redis_url) if sinks is None else Alerting(sinks=sinks, redis_url=redis_url)
        )
    alerting = alerts
    if alerting:
        from . import alerts as kit_alerts

        if not isinstance(alerting, Alerting):
            alerting = Alerting(sinks=tuple(alerting))
        on_result = None
        if metrics_setup is not None:
            setup = metrics_setup

            def on_result(sink: str, result: str) -> None:
                setup.observer.metrics.alerts.labels(sink, result).inc()

            # Each sink's delivery results exist at 0 from worker start, as the task series do.
            setup.alert_sinks = tuple(sink.name for sink in alerting.sinks)
        alert_observer = kit_alerts.install(app, alerting, on_result=on_result)
        dispatcher.subscribe(alert_observer)
    health_setup = None
    if health:
        from . import health as kit_health

        health_setup = kit_health.install(app, state_file=health_file or app.conf.get(HEALTH_FILE_SETTING))
    # -- dead letters (issue 17) --
    if dead_letters is None:
        dead_letters = bool(app.conf.get(DEAD_LETTERS_SETTING, False))
    if dead_letters:
        from . import deadletter

        dispatcher.subscribe(deadletter.install(app))
    # -- end dead letters --
    for observer in user_observers:
        dispatcher.subscribe(observer)
    _check_config_at_worker_start(app)
    result = Instrumentation(
        app, logging, metrics_setup, alert_observer, health_setup, user_observers, options
    )
    app._celery_kit_instrumentation = result
    return result


def _secret(value: Any) -> str | None:
    """A setting that may hold a :class:`~pydantic.SecretStr` (from ``KitSettings``)."""
    if value is None or value == "":
        return None
    reveal = getattr(value, "get_secret_value", None)
    return str(reveal() if reveal is not None else value)


def _check_config_at_worker_start(app: Celery) -> None:
    """Log the dangerous setting combinations (:func:`celery_kit.presets.check`) once the
    worker starts, when the app's configuration and tasks are final."""
    from celery import signals

    def check_config(sender: Any = None, **_: Any) -> None:
        if id(getattr(sender, "app", None)) != id(app):
            return
        from .presets import check

        check(app.conf, tasks=app.tasks.values())

    signals.worker_init.connect(check_config, weak=False)
    app._celery_kit_config_check = check_config  # keeps the receiver's identity with the app
