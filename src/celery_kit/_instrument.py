"""``instrument(app)``: wire the observers into one app, once; ``uninstrument(app)`` undoes it.

Everything ``instrument()`` decides lives on that app's :class:`Instrumentation`: a
second app, instrumented with other options, never changes the first. Logging, metrics,
alerts, health and the user's observers are all :class:`~celery_kit.Observer` instances
on the app's dispatcher, and know nothing of one another.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery import Celery
from prometheus_client import CollectorRegistry

from . import _bridge
from ._context import DEFAULT_PROPAGATED_KEYS, ContextPropagation
from ._dispatch import forget_app, known_apps
from ._errors import ConfigurationError
from ._log_observer import LoggingObserver
from ._metrics_worker import MetricsSetup
from ._observer import Observer
from .alerts import Alerter, Alerting, AlertObserver, sinks_from_urls
from .metrics import DEFAULT_DURATION_BUCKETS, DEFAULT_QUEUE_WAIT_BUCKETS

if TYPE_CHECKING:
    from .health import HealthSetup

__all__ = ["Instrumentation", "instrument", "set_propagated_keys", "uninstrument"]

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
    options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: The logging observer (``logging=True``), and the app's propagated context keys.
    log_observer: LoggingObserver | None = field(default=None, repr=False, compare=False)
    context: ContextPropagation | None = field(default=None, repr=False, compare=False)
    #: The dead-letter capture (``dead_letters=True``; issue 17).
    dead_letters: Observer | None = field(default=None, repr=False, compare=False)

    def subscribed(self) -> tuple[Observer, ...]:
        """Every observer this instrumentation put on the app's dispatcher, in order."""
        kit: list[Any] = [self.log_observer]
        kit += [self.metrics, self.alerts, self.health, self.dead_letters]
        return (*(o for o in kit if o is not None), *self.observers)


#: The propagated keys of apps instrumented without ``log_context`` (``propagate_context()``).
_default_keys: tuple[str, ...] = DEFAULT_PROPAGATED_KEYS


def set_propagated_keys(keys: tuple[str, ...], app: Any = None) -> None:
    """:func:`celery_kit.logging.propagate_context`: one app's keys, or the default's."""
    global _default_keys
    if app is not None:
        instrumentation: Instrumentation | None = getattr(app, "_celery_kit_instrumentation", None)
        if instrumentation is None or instrumentation.context is None:
            raise ConfigurationError(
                f"app {getattr(app, 'main', app)!r} is not instrumented with logging: call "
                "instrument(app, log_context=...) instead."
            )
        instrumentation.context.keys = frozenset(keys)
        instrumentation.options["log_context"] = keys  # what instrument() must be given again
        return
    _default_keys = keys
    for known in known_apps():
        found: Instrumentation | None = getattr(known, "_celery_kit_instrumentation", None)
        if found is not None and found.context is not None and found.options.get("log_context") is None:
            found.context.keys = frozenset(keys)


def instrument(
    app: Celery,
    *,
    logging: bool = True,
    metrics: bool = True,
    alerts: Alerting | Sequence[Alerter] | None = _DEFAULT,
    json_logs: bool | None = None,
    log_context: Iterable[str] | None = None,
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
        logging: log each task lifecycle step once (outside a worker, through the
            standard library's ``celery_kit.tasks`` logger, so the application's logging
            configuration decides), take over worker logging (structlog, JSON lines
            unless on a terminal; ``json_logs`` forces either; worker and beat processes
            only), and carry the ``log_context`` keys of the producer's structlog context
            to the worker (default ``request_id`` and ``correlation_id``, or what
            :func:`~celery_kit.logging.propagate_context` chose).
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
    context_keys = None if log_context is None else tuple(log_context)
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
        "log_context": context_keys,
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
    # Everything that can refuse the configuration first: a refused instrument() leaves
    # nothing connected and nothing added to the app.
    conf: Any = app.conf
    port = metrics_port if metrics_port is not None else conf.get(METRICS_PORT_SETTING, DEFAULT_METRICS_PORT)
    try:
        port = int(port or 0)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"metrics port must be a number (instrument(metrics_port=...) or the "
            f"{METRICS_PORT_SETTING} setting), got {port!r}."
        ) from None
    if alerts is _DEFAULT:
        configured = conf.get(ALERT_SINKS_SETTING)
        redis_url = _secret(conf.get(ALERT_REDIS_SETTING))
        sinks = sinks_from_urls(configured) if configured else None
        alerts = (
            Alerting(redis_url=redis_url) if sinks is None else Alerting(sinks=sinks, redis_url=redis_url)
        )
    alerting: Alerting | None = None
    if alerts:
        alerting = alerts if isinstance(alerts, Alerting) else Alerting(sinks=tuple(alerts))

    dispatcher = _bridge.dispatcher_for(app)
    log_observer = context = None
    if logging:
        context = ContextPropagation(_default_keys if context_keys is None else context_keys)
        log_observer = LoggingObserver(context)
        _bridge.connect_logging(True)
    metrics_setup = None
    if metrics:
        from . import _metrics_worker

        metrics_setup = _metrics_worker.install(
            app,
            port=port,
            host=str(metrics_host or conf.get(METRICS_HOST_SETTING, "127.0.0.1")),
            prefix=metrics_prefix,
            registry=metrics_registry,
            duration_buckets=duration_buckets,
            queue_wait_buckets=queue_wait_buckets,
            multiprocess_dir=metrics_dir,
        )
    alert_observer = None
    if alerting is not None:
        from . import alerts as kit_alerts

        on_result = metrics_setup.count_alert if metrics_setup is not None else None
        if metrics_setup is not None:
            # Each sink's delivery results exist at 0 from worker start, as the task series do.
            metrics_setup.alert_sinks = tuple(sink.name for sink in alerting.sinks)
        alert_observer = kit_alerts.install(app, alerting, on_result=on_result)
    health_setup = None
    if health:
        from . import health as kit_health

        health_setup = kit_health.install(app, state_file=health_file or app.conf.get(HEALTH_FILE_SETTING))
    # -- dead letters (issue 17) --
    dead_letter_observer = None
    if dead_letters is None:
        dead_letters = bool(app.conf.get(DEAD_LETTERS_SETTING, False))
    if dead_letters:
        from . import deadletter

        dead_letter_observer = deadletter.install(app)
    # -- end dead letters --
    result = Instrumentation(
        app,
        logging,
        metrics_setup,
        alert_observer,
        health_setup,
        user_observers,
        options,
        log_observer=log_observer,
        context=context,
        dead_letters=dead_letter_observer,
    )
    for observer in result.subscribed():
        dispatcher.subscribe(observer)
    app._celery_kit_instrumentation = result
    return result


def _logs(app: Any) -> bool:
    return bool(getattr(getattr(app, "_celery_kit_instrumentation", None), "logging", False))


def uninstrument(app: Celery) -> None:
    """Undo :func:`instrument` for ``app`` (idempotent).

    Its observers leave the app's dispatcher, its worker and consumer steps leave the
    app, its alert delivery is closed, and once no app is instrumented, every signal
    receiver the kit connected is disconnected. Metric families stay registered in
    their registry (prometheus-client has no safe way to take back a series a scrape
    may have seen); instrumenting the app again reuses them.
    """
    instrumentation: Instrumentation | None = getattr(app, "_celery_kit_instrumentation", None)
    dispatcher = getattr(app, "_celery_kit_dispatcher", None)
    if instrumentation is not None:
        if dispatcher is not None:
            for observer in instrumentation.subscribed():
                dispatcher.unsubscribe(observer)
        if instrumentation.metrics is not None:
            instrumentation.metrics.remove()
        if instrumentation.alerts is not None:
            instrumentation.alerts.close()
        if instrumentation.health is not None:
            instrumentation.health.remove()
        remove_dead_letters = getattr(instrumentation.dead_letters, "remove", None)
        if remove_dead_letters is not None:  # issue 17
            remove_dead_letters()
        del app._celery_kit_instrumentation
    from ._guard import MessageGuard

    app.steps["consumer"].discard(MessageGuard)
    if dispatcher is not None and not dispatcher.observers:
        forget_app(app)
    remaining = known_apps()
    if not remaining:
        _bridge.disconnect()
    elif not any(_logs(a) for a in remaining):
        _bridge.connect_logging(False)


def _secret(value: Any) -> str | None:
    """A setting that may hold a :class:`~pydantic.SecretStr` (from ``KitSettings``)."""
    if value is None or value == "":
        return None
    reveal = getattr(value, "get_secret_value", None)
    return str(reveal() if reveal is not None else value)
