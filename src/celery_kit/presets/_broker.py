"""Which broker a URL points at, so a preset sets only the options that apply to it.

Celery ignores transport options it does not know, silently: a Redis
``visibility_timeout`` on RabbitMQ or a quorum queue on Redis would look configured and
do nothing. Detecting the broker once, from the URL scheme, lets the presets set each
option only where it has an effect, and lets :func:`~celery_kit.presets.check` reason
about the broker the app really uses.
"""

from __future__ import annotations

from enum import Enum

from .._errors import ConfigurationError

__all__ = ["Broker", "broker_schemes", "detect_broker"]


class Broker(str, Enum):
    """The broker families the presets know how to configure."""

    REDIS = "redis"
    RABBITMQ = "rabbitmq"
    FILESYSTEM = "filesystem"
    MEMORY = "memory"


_SCHEMES: dict[str, Broker] = {
    "redis": Broker.REDIS,
    "rediss": Broker.REDIS,
    "redis+socket": Broker.REDIS,
    "sentinel": Broker.REDIS,
    "amqp": Broker.RABBITMQ,
    "amqps": Broker.RABBITMQ,
    "pyamqp": Broker.RABBITMQ,
    "filesystem": Broker.FILESYSTEM,
    "memory": Broker.MEMORY,
}


def broker_schemes() -> tuple[str, ...]:
    """The URL schemes the presets accept, sorted."""
    return tuple(sorted(_SCHEMES))


def _scheme(url: str) -> str:
    scheme, sep, _ = url.strip().partition("://")
    return scheme.lower() if sep else ""


def detect_broker(url: str) -> Broker:
    """Return the broker family of ``url`` (``;``-separated failover URLs allowed).

    Raises:
        ConfigurationError: the URL is empty, has a scheme the presets do not know, or
            mixes broker families in a failover list.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            f"broker_url must be a non-empty URL string such as 'redis://localhost:6379/0', got {url!r}."
        )
    found: set[Broker] = set()
    for part in url.split(";"):
        if not part.strip():
            continue
        scheme = _scheme(part)
        broker = _SCHEMES.get(scheme)
        if broker is None:
            shown = f"scheme {scheme!r}" if scheme else "no scheme"
            raise ConfigurationError(
                f"broker URL has {shown}; the presets support {', '.join(broker_schemes())}. "
                "Use one of those schemes (e.g. 'redis://host:6379/0' or 'amqp://user:pass@host//'), "
                "or configure this transport without a preset."
            )
        found.add(broker)
    if len(found) > 1:
        names = ", ".join(sorted(b.value for b in found))
        raise ConfigurationError(
            f"failover broker URLs must all point at one kind of broker, got {names}; "
            "list only URLs of the same broker in broker_url."
        )
    return found.pop()


def is_sentinel(url: str) -> bool:
    """True when ``url`` uses Redis Sentinel (it needs a ``master_name`` transport option)."""
    return any(_scheme(part) == "sentinel" for part in url.split(";") if part.strip())
