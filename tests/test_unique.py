"""Unique tasks in the caller: keys, duplicates, skip, a failed publish, configuration errors.

The app publishes to kombu's in-memory broker (the messages can be counted); the locks
live in the real Redis. The worker side is in tests/integration/test_unique.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from celery import Celery
from celery.app.task import Context
from kombu.exceptions import OperationalError
from pydantic import BaseModel, SecretStr

from celery_kit import (
    CeleryKitError,
    ConfigurationError,
    DuplicateTaskError,
    Unique,
    validated_task,
)
from celery_kit._unique import UNIQUE_HEADER

from ._support import free_port, wait_for
from .conftest import published


class Order(BaseModel):
    id: int
    region: str


class Checkout(BaseModel):
    order: Order
    filters: dict[str, int] = {}
    note: str = ""


class Login(BaseModel):
    user: str
    password: SecretStr


@pytest.fixture
def locked_app(app: Celery, redis_url: str, redis_client: redis.Redis) -> Celery:
    app.conf.celery_kit_unique_url = redis_url
    return app


def _keys(client: redis.Redis, name: str) -> list[str]:
    return sorted(key.decode() for key in client.scan_iter(f"celery_kit:unique:{name}:*"))


def test_a_duplicate_is_refused_with_the_holder_and_nothing_is_published(
    locked_app: Celery, unique: str
) -> None:
    @validated_task(
        locked_app, shared=False, name=f"checkout-{unique}", unique=Unique(on=("order.id",), ttl=60)
    )
    def checkout(payload: Checkout) -> None: ...

    first = checkout.delay(order={"id": 7, "region": "eu"})
    with pytest.raises(DuplicateTaskError) as refused:
        checkout.delay(order={"id": 7, "region": "us"}, note="other fields do not count")
    assert refused.value.existing_task_id == first.id
    assert refused.value.key == f"celery_kit:unique:checkout-{unique}:[7]"
    assert first.id in str(refused.value)
    checkout.delay(order={"id": 8, "region": "eu"})
    assert len(published(locked_app)) == 2


def test_keys_are_canonical_json_and_namespaced_by_task(
    locked_app: Celery, unique: str, redis_client: redis.Redis
) -> None:
    options = {"unique": Unique(on=("filters", "order.region"), ttl=60)}

    @validated_task(locked_app, shared=False, name=f"one-{unique}", **options)
    def one(payload: Checkout) -> None: ...

    @validated_task(locked_app, shared=False, name=f"two-{unique}", **options)
    def two(payload: Checkout) -> None: ...

    one.delay(order={"id": 1, "region": "eu"}, filters={"b": 1, "a": 2})
    with pytest.raises(DuplicateTaskError):  # the same mapping in another order: the same key
        one.delay(order={"id": 2, "region": "eu"}, filters={"a": 2, "b": 1})
    two.delay(order={"id": 1, "region": "eu"}, filters={"b": 1, "a": 2})  # another task: free
    assert _keys(redis_client, f"one-{unique}") == [f'celery_kit:unique:one-{unique}:[{{"a":2,"b":1}},"eu"]']
    assert len(_keys(redis_client, f"two-{unique}")) == 1


def test_a_signature_task_keys_on_its_parameters(locked_app: Celery, unique: str) -> None:
    @validated_task(locked_app, shared=False, name=f"sig-{unique}", unique=Unique(on=("user_id",), ttl=60))
    def notify(user_id: int, text: str = "") -> None: ...

    notify.delay(3, "hi")
    with pytest.raises(DuplicateTaskError):
        notify.delay(user_id="3", text="coerced to the same int")
    notify.delay(4)


def test_a_callable_key_gets_the_validated_model(locked_app: Celery, unique: str) -> None:
    seen: list[Any] = []

    def key(payload: Checkout) -> str:
        seen.append(payload)
        return payload.order.region

    @validated_task(locked_app, shared=False, name=f"call-{unique}", unique=Unique(on=key, ttl=60))
    def checkout(payload: Checkout) -> None: ...

    checkout.delay(order={"id": 1, "region": "eu"})
    with pytest.raises(DuplicateTaskError) as refused:
        checkout.delay(order={"id": 2, "region": "eu"})
    assert refused.value.key == f"celery_kit:unique:call-{unique}:eu"
    assert all(isinstance(payload, Checkout) for payload in seen)


def test_secret_fields_never_reach_the_key(
    locked_app: Celery, unique: str, redis_client: redis.Redis
) -> None:
    @validated_task(
        locked_app, shared=False, name=f"login-{unique}", unique=Unique(on=("user", "password"), ttl=60)
    )
    def login(payload: Login) -> None: ...

    login.delay(user="ann", password="hunter2-secret")
    with pytest.raises(DuplicateTaskError) as refused:
        login.delay(user="ann", password="hunter2-secret")
    assert "hunter2" not in str(refused.value)
    (key,) = _keys(redis_client, f"login-{unique}")
    assert "hunter2" not in key
    assert key.startswith(f"celery_kit:unique:login-{unique}:sha256:")


def test_skip_returns_the_existing_result_without_publishing(locked_app: Celery, unique: str) -> None:
    @validated_task(
        locked_app, shared=False, name=f"skip-{unique}", unique=Unique(on=("order.id",), on_duplicate="skip")
    )
    def checkout(payload: Checkout) -> None: ...

    first = checkout.delay(order={"id": 1, "region": "eu"})
    again = checkout.delay(order={"id": 1, "region": "eu"})
    assert again.id == first.id
    assert len(published(locked_app)) == 1


def test_a_failed_publish_releases_the_lock(redis_url: str, redis_client: redis.Redis, unique: str) -> None:
    app = Celery(f"down-{unique}", broker=f"redis://127.0.0.1:{free_port()}/0", set_as_current=False)
    app.conf.update(
        celery_kit_unique_url=redis_url,
        task_publish_retry=False,
        broker_connection_timeout=1,
        task_soft_time_limit=5,
        task_time_limit=10,
    )

    @validated_task(app, shared=False, name=f"down-{unique}", unique=Unique(on=("order.id",), ttl=60))
    def checkout(payload: Checkout) -> None: ...

    for _ in range(2):  # the second call fails the same way: no lock was left behind
        with pytest.raises(OperationalError):
            checkout.delay(order={"id": 1, "region": "eu"})
    assert _keys(redis_client, f"down-{unique}") == []
    app.close()


def test_the_lock_store_is_a_redis_broker_or_the_setting(unique: str, redis_url: str) -> None:
    redis_app = Celery(f"r-{unique}", broker=redis_url, set_as_current=False)

    @validated_task(
        redis_app, shared=False, name=f"r-{unique}", unique=Unique(on=("order.id",)), time_limit=9
    )
    def on_redis(payload: Checkout) -> None: ...

    assert redis_app.tasks[f"r-{unique}"]._unique_guard.url == redis_url

    amqp_app = Celery(f"a-{unique}", broker="amqp://guest:guest@127.0.0.1:5672//", set_as_current=False)

    @validated_task(amqp_app, shared=False, name=f"a-{unique}", unique=Unique(on=("order.id",)), time_limit=9)
    def on_amqp(payload: Checkout) -> None: ...

    with pytest.raises(ConfigurationError, match="celery_kit_unique_url"):
        amqp_app.finalize()  # registration refuses it, before any call


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"on": ()}, "field names"),
        ({"on": ("a..b",)}, "field names"),
        ({"on": ("id",), "mode": "once"}, "queued"),
        ({"on": ("id",), "on_duplicate": "ignore"}, "skip"),
        ({"on": ("id",), "ttl": 0}, "positive"),
        ({"on": ("id",), "ttl": 10, "lease": 30}, "lease"),
    ],
)
def test_bad_unique_options_are_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Unique(**options)


def test_unknown_fields_are_refused_at_registration(locked_app: Celery, unique: str) -> None:
    @validated_task(
        locked_app, shared=False, name=f"bad-{unique}", unique=Unique(on=("order.id", "user")), time_limit=9
    )
    def checkout(payload: Checkout) -> None: ...

    with pytest.raises(ConfigurationError, match=r"\['user'\]"):
        locked_app.finalize()


def test_duplicate_task_error_is_in_the_tree_and_survives_json() -> None:
    error = DuplicateTaskError("t", "celery_kit:unique:t:[1]", "abc")
    assert isinstance(error, CeleryKitError)
    rebuilt = DuplicateTaskError(*json.loads(json.dumps(error.args)))
    assert (rebuilt.existing_task_id, rebuilt.key, str(rebuilt)) == ("abc", error.key, str(error))
    assert DuplicateTaskError.__module__ == "celery_kit"


# -- where the worker checks the lock at start, and where the message vouches for it ----------


def _start(task: Any, header: dict[str, Any] | None, **request: Any) -> Any:
    """What the worker does at a start: claim with a request as Celery builds it."""
    fields = {"id": "first", "retries": 0, "delivery_info": {"routing_key": "q"}, "headers": None, **request}
    context = Context(**fields)
    if header is not None:
        setattr(context, UNIQUE_HEADER, header)
    return task._unique_guard.claim(task, context, (), {"payload": {"order": {"id": 1, "region": "eu"}}})


def _queued_task(app: Celery, unique: str, **options: Any) -> Any:
    @validated_task(
        app, shared=False, name=f"start-{unique}", unique=Unique(on=("order.id",), ttl=60, lease=5), **options
    )
    def checkout(payload: Checkout) -> None: ...

    app.finalize()
    return checkout


@pytest.mark.parametrize(
    ("case", "request_fields", "until_in"),
    [
        ("a first delivery, long before until: the fast path", {}, 60),
        ("a retry", {"retries": 1}, 60),
        ("a redelivery", {"delivery_info": {"routing_key": "q", "redelivered": True}}, 60),
        ("within a lease of until", {}, 4),
        ("past until", {}, -1),
    ],
)
def test_only_a_first_delivery_well_before_until_starts_unchecked(
    locked_app: Celery,
    unique: str,
    redis_client: redis.Redis,
    case: str,
    request_fields: Any,
    until_in: float,
) -> None:
    """Another message holds the key: a checked start refuses to run, the fast path does not ask."""
    checkout = _queued_task(locked_app, unique)
    key = f"celery_kit:unique:start-{unique}:[1]"
    redis_client.set(key, "other|token", px=60_000)
    header = {"key": key, "token": "mine", "until": time.time() + until_in}
    if request_fields:
        with pytest.raises(DuplicateTaskError) as refused:
            _start(checkout, header, **request_fields)
        assert refused.value.existing_task_id == "other"
        return
    if until_in < 5:
        with pytest.raises(DuplicateTaskError):
            _start(checkout, header)
        return
    held = _start(checkout, header)  # the message vouches for its lock: nothing was read
    assert held.conn is not None
    checkout._unique_guard.finish(held, keep=False)  # the lease found another owner: logged
    assert redis_client.get(key) == b"other|token"  # and the release did not touch it


def test_a_message_without_until_is_checked(
    locked_app: Celery, unique: str, redis_client: redis.Redis
) -> None:
    checkout = _queued_task(locked_app, unique)
    key = f"celery_kit:unique:start-{unique}:[1]"
    redis_client.set(key, "other|token", px=60_000)
    with pytest.raises(DuplicateTaskError):
        _start(checkout, {"key": key, "token": "mine"})  # a republish: no lock taken for it
    with pytest.raises(DuplicateTaskError):
        _start(checkout, None)  # published around the kit: the worker builds the key


def test_acks_late_on_a_broker_without_redelivery_flags_is_always_checked(
    locked_app: Celery, unique: str, redis_client: redis.Redis
) -> None:
    checkout = _queued_task(locked_app, unique, acks_late=True)  # kombu's memory transport
    key = f"celery_kit:unique:start-{unique}:[1]"
    redis_client.set(key, "other|token", px=60_000)
    with pytest.raises(DuplicateTaskError):
        _start(checkout, {"key": key, "token": "mine", "until": time.time() + 60})


def test_the_fast_path_leases_its_lock_and_releases_it_in_one_exchange(
    locked_app: Celery, unique: str, redis_client: redis.Redis
) -> None:
    checkout = _queued_task(locked_app, unique)
    first = checkout.delay(order={"id": 1, "region": "eu"})
    (message,) = published(locked_app)
    header = message.headers[UNIQUE_HEADER]
    assert time.time() + 59 < header["until"] <= time.time() + 60
    key = header["key"]
    assert redis_client.pttl(key) > 55_000  # the publish took it for ttl
    held = _start(checkout, header, id=first.id)
    wait_for(lambda: redis_client.pttl(key) <= 5_000)  # the lease landed, unread
    checkout._unique_guard.finish(held, keep=False)
    assert redis_client.get(key) is None


def test_a_republish_drops_until_so_the_worker_checks(locked_app: Celery, unique: str) -> None:
    checkout = _queued_task(locked_app, unique)
    header = {"key": "k", "token": "t", "until": time.time() + 60}
    checkout.apply_async(kwargs={"order": {"id": 1, "region": "eu"}}, headers={UNIQUE_HEADER: header})
    (message,) = published(locked_app)
    assert message.headers[UNIQUE_HEADER] == {"key": "k", "token": "t"}
