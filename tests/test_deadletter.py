"""The dead-letter store against real Redis and RabbitMQ: entries, retention, claims, replay.

Each test has its own key prefix / stream and queue names; nothing is mocked.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from threading import Barrier
from typing import Any

import pytest
from celery import Celery
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, SecretStr

from celery_kit import ConfigurationError, instrument, presets, validated_task
from celery_kit.deadletter import (
    REPLAYED_FROM_HEADER,
    DeadLetter,
    DeadLetterObserver,
    DeadLetterStore,
    StoredMessage,
    store_config,
)
from celery_kit.deadletter._cli import parse_duration
from celery_kit.testing import read_metric

from ._brokers import drop_queue

SECRET = "hunter2-but-longer"


class Login(BaseModel):
    user: str
    password: SecretStr


def entry(entry_id: str, task: str = "shop.ship", **changes: Any) -> DeadLetter:
    body = json.dumps([[], {"order_id": 7, "api_key": SECRET}, {"callbacks": None}])
    fields: dict[str, Any] = {
        "id": entry_id,
        "task_name": task,
        "task_id": entry_id,
        "queue": "q",
        "source": "task",
        "kind": "permanent",
        "reason": "permanent error",
        "exception_type": "ValueError",
        "exception_message": "no such order",
        "attempts": 1,
        "message": StoredMessage(body=body, headers={"task": task, "id": entry_id}, routing_key="q"),
    }
    fields.update(changes)
    return DeadLetter(**fields)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_app(request: pytest.FixtureRequest, unique: str) -> Iterator[Celery]:
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "amqp_url")
    app = Celery(f"dlq-{unique}", broker=url, set_as_current=False)
    app.conf.update(
        task_default_queue=f"dlq-{unique}-q",
        celery_kit_dead_letter_prefix=f"dlq-{unique}",
        celery_kit_dead_letter_max_entries=3,
        celery_kit_dead_letter_claim_timeout=0.5,
    )
    yield app
    with DeadLetterStore.for_app(app) as store:
        store.purge(all=True)
        delete = getattr(store.backend, "delete", None)
        if delete is not None:
            delete()
    drop_queue(app, app.conf.task_default_queue)
    app.close()


@pytest.fixture
def store(broker_app: Celery) -> Iterator[DeadLetterStore]:
    with DeadLetterStore.for_app(broker_app) as store:
        yield store


# -- where it lives --------------------------------------------------------------------------


def test_the_store_is_on_the_broker_or_the_redis_the_setting_names(redis_url: str, amqp_url: str) -> None:
    app = Celery("shop", broker=redis_url, set_as_current=False)
    assert (store_config(app).backend, store_config(app).url) == ("redis", redis_url)
    assert store_config(app).prefix == "celery_kit.dlq.shop"
    app = Celery("shop", broker=amqp_url, set_as_current=False)
    assert store_config(app).backend == "rabbitmq"
    app.conf.celery_kit_dead_letter_url = redis_url
    assert (store_config(app).backend, store_config(app).url) == ("redis", redis_url)


def test_a_broker_without_a_store_is_refused_with_the_fix() -> None:
    app = Celery("shop", broker="memory://", set_as_current=False)
    with pytest.raises(ConfigurationError, match="celery_kit_dead_letter_url"):
        store_config(app)
    app.conf.celery_kit_dead_letter_url = "amqp://guest@localhost//"
    with pytest.raises(ConfigurationError, match="Redis URL"):
        store_config(app)
    app.conf.celery_kit_dead_letter_url = None
    app.conf.celery_kit_dead_letter_max_entries = 0
    app.conf.broker_url = "redis://localhost:6379/0"
    with pytest.raises(ConfigurationError, match="positive"):
        store_config(app)


# -- entries, retention, claims --------------------------------------------------------------


def test_entries_are_listed_newest_first_by_task_and_one_per_id(store: DeadLetterStore) -> None:
    store.put(entry("a", task="shop.ship"))
    store.put(entry("b", task="shop.bill"))
    again = store.put(entry("a", task="shop.ship", reason="retries exhausted"))
    if store.backend.name == "redis":
        assert again.new is False
    assert [e.id for e in store.list()] == ["a", "b"]  # a was stored again: newest
    assert [e.id for e in store.list(task="shop.bill")] == ["b"]
    assert store.list(limit=1)[0].id == "a"
    got = store.get("a", reveal=True)
    assert got is not None
    assert got.reason == "retries exhausted"
    assert store.get("nope") is None
    stats = store.stats()
    assert (stats.total, stats.by_task) == (2, {"shop.bill": 1, "shop.ship": 1})


def test_retention_drops_the_oldest_first_and_counts_every_drop(store: DeadLetterStore) -> None:
    for name in ("e1", "e2", "e3", "e4", "e5"):
        store.put(entry(name, task="shop.ship" if name != "e2" else "shop.bill"))
        time.sleep(0.002)
    dropped = store.trim()  # Redis trims at each write already; the stream at each refresh
    stats = store.stats()
    assert store.ids() == ["e3", "e4", "e5"]
    assert stats.dropped == {"shop.bill": 1, "shop.ship": 1}
    assert stats.total == 3
    if store.backend.name == "rabbitmq":
        assert sorted(dropped) == ["shop.bill", "shop.ship"]
    assert store.trim() == []  # nothing is dropped (or counted) twice


def test_entries_older_than_the_age_limit_are_dropped(broker_app: Celery) -> None:
    broker_app.conf.celery_kit_dead_letter_max_age = 0.2
    with DeadLetterStore.for_app(broker_app) as store:
        store.put(entry("old"))
        time.sleep(0.3)
        assert store.list() == []  # not shown once too old
        store.put(entry("new"))
        store.trim()
        assert store.ids() == ["new"]
        assert store.stats().dropped == {"shop.ship": 1}


def test_a_claim_is_exclusive_until_settled_or_expired(store: DeadLetterStore) -> None:
    store.put(entry("a"))
    backend = store.backend
    first = backend.claim("a", "t1", time.time(), 0.5)
    assert first is not None
    assert first.entry is not None
    second = backend.claim("a", "t2", time.time(), 0.5)
    assert second is not None
    assert second.entry is None
    assert second.holder == "t1"
    assert backend.claim("missing", "t3", time.time(), 0.5) is None
    backend.remove("a", "t2")  # not its claim: nothing happens
    assert store.get("a") is not None
    time.sleep(0.6)  # t1's replay died: its claim expires
    third = backend.claim("a", "t3", time.time(), 5)
    assert third is not None
    assert third.entry is not None
    backend.remove("a", "t3")
    assert store.get("a") is None


def test_a_new_failure_of_a_claimed_entry_wins_over_the_replay_that_claimed_it(
    store: DeadLetterStore,
) -> None:
    store.put(entry("a"))
    claim = store.backend.claim("a", "t1", time.time(), 30)
    assert claim is not None
    assert claim.entry is not None
    store.put(entry("a", reason="retries exhausted"))  # the replayed message failed again
    store.backend.remove("a", "t1")  # the replay's late removal must not delete it
    kept = store.get("a")
    assert kept is not None
    assert kept.reason == "retries exhausted"


def test_purge_by_id_by_age_or_all(store: DeadLetterStore) -> None:
    store.put(entry("a"))
    time.sleep(0.3)
    store.put(entry("b"))
    store.put(entry("c"))
    assert store.purge(["a", "missing"]) == 1
    store.put(entry("a"))
    assert store.purge(older_than=timedelta(days=1)) == 0
    time.sleep(0.2)
    assert store.purge(older_than=0.1) == 3
    store.put(entry("d"))
    assert store.purge(all=True) == 1
    assert store.stats().total == 0
    with pytest.raises(ValueError, match="older_than"):
        store.purge()


# -- secrets ---------------------------------------------------------------------------------


def test_list_and_get_mask_secrets_the_store_keeps_them(broker_app: Celery) -> None:
    @validated_task(broker_app, name="shop.login", shared=False)
    def login(payload: Login) -> None:
        raise ValueError("nope")

    body = json.dumps([[], {"user": "ann", "password": SECRET}, {}])
    stored = StoredMessage(body=body, headers={"task": "shop.login", "id": "x", "kwargsrepr": "..."})
    with DeadLetterStore.for_app(broker_app) as store:
        store.put(
            entry("x", task="shop.login", message=stored, exception_message=f"bad {SECRET} at redis://:pw@h")
        )
        store.put(entry("y"))  # a secret-looking name: api_key
        for shown in (store.get("x"), *store.list()):
            assert shown is not None
            text = shown.model_dump_json()
            assert SECRET not in text
            assert ":pw@" not in text
        assert SECRET in (store.get("x", reveal=True) or entry("z")).message.body
        assert (
            SECRET in store.list(reveal=True)[0].message.body
            or SECRET in store.list(reveal=True)[1].message.body
        )


# -- replay ----------------------------------------------------------------------------------


def _drain(app: Celery) -> list[Any]:
    messages = []
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(app.conf.task_default_queue, no_ack=True)
        while True:
            try:
                messages.append(queue.get(timeout=1))
            except queue.Empty:
                break
        queue.close()
    return messages


def _failed_message(app: Celery, task: str, kwargs: dict[str, Any], task_id: str) -> DeadLetter:
    headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "retries": 4,
        "celery_kit_first_attempt": 1.0,
        "expires": "2000-01-01T00:00:00+00:00",
    }
    body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    message = StoredMessage(
        body=body,
        headers=headers,
        properties={"correlation_id": task_id, "priority": 0},
        routing_key=app.conf.task_default_queue,
    )
    return entry(task_id, task=task, message=message)


def test_replay_publishes_the_same_message_confirmed_then_removes_the_entry(broker_app: Celery) -> None:
    @validated_task(broker_app, name="shop.ship", shared=False)
    def ship(order_id: int) -> None: ...

    task_id = str(uuid.uuid4())
    with DeadLetterStore.for_app(broker_app) as store:
        store.put(_failed_message(broker_app, "shop.ship", {"order_id": 7}, task_id))
        result = store.replay([task_id, "missing"])
        assert result.replayed == [task_id]
        assert result.missing == ["missing"]
        assert store.get(task_id) is None
    (message,) = _drain(broker_app)
    headers = message.headers
    assert headers["id"] == task_id
    assert headers["task"] == "shop.ship"
    assert headers[REPLAYED_FROM_HEADER] == task_id
    assert headers["retries"] == 0
    assert "celery_kit_first_attempt" not in headers
    assert "expires" not in headers
    assert json.loads(message.body)[1] == {"order_id": 7}
    assert message.properties["correlation_id"] == task_id


def test_an_entry_that_no_longer_fits_the_task_stays_with_the_reason(broker_app: Celery) -> None:
    @validated_task(broker_app, name="shop.ship", shared=False)
    def ship(order_id: int, warehouse: str) -> None: ...  # the signature changed since

    ids = [str(uuid.uuid4()) for _ in range(2)]
    with DeadLetterStore.for_app(broker_app) as store:
        store.put(_failed_message(broker_app, "shop.ship", {"order_id": 7}, ids[0]))
        store.put(_failed_message(broker_app, "shop.gone", {"order_id": 7}, ids[1]))
        result = store.replay(ids)
        assert result.replayed == []
        assert "warehouse" in result.kept[ids[0]]
        assert "no task named 'shop.gone'" in result.kept[ids[1]]
        kept = store.get(ids[0])
        assert kept is not None
        assert kept.replay_error is not None
        assert "warehouse" in kept.replay_error
        assert store.replay(ids).kept.keys() == set(ids)  # not claimed forever: replayable again
    assert _drain(broker_app) == []


def test_concurrent_replays_publish_each_entry_once(broker_app: Celery) -> None:
    @validated_task(broker_app, name="shop.ship", shared=False)
    def ship(order_id: int) -> None: ...

    ids = [str(uuid.uuid4()) for _ in range(3)]
    broker_app.conf.celery_kit_dead_letter_max_entries = 10
    with DeadLetterStore.for_app(broker_app) as store:
        for task_id in ids:
            store.put(_failed_message(broker_app, "shop.ship", {"order_id": 1}, task_id))
    barrier = Barrier(3)

    def operator(_: int) -> list[str]:
        with DeadLetterStore.for_app(broker_app) as mine:
            barrier.wait()
            return mine.replay(ids).replayed

    with ThreadPoolExecutor(3) as pool:
        replayed = [i for done in pool.map(operator, range(3)) for i in done]
    assert sorted(replayed) == sorted(ids)
    assert sorted(m.headers["id"] for m in _drain(broker_app)) == sorted(ids)


# -- capture ---------------------------------------------------------------------------------


def test_instrument_subscribes_the_capture_when_asked_or_set(unique: str, redis_url: str) -> None:
    app = Celery(f"a-{unique}", broker=redis_url, set_as_current=False)
    instrument(app, logging=False, metrics=False, alerts=None, health=False, dead_letters=True)
    assert any(isinstance(o, DeadLetterObserver) for o in app._celery_kit_dispatcher.observers)
    app = Celery(f"b-{unique}", broker=redis_url, set_as_current=False)
    app.conf.celery_kit_dead_letters = True
    instrument(app, logging=False, metrics=False, alerts=None, health=False)
    assert any(isinstance(o, DeadLetterObserver) for o in app._celery_kit_dispatcher.observers)
    app = Celery(f"c-{unique}", broker=redis_url, set_as_current=False)
    instrument(app, logging=False, metrics=False, alerts=None, health=False)
    assert not any(isinstance(o, DeadLetterObserver) for o in app._celery_kit_dispatcher.observers)


def test_presets_production_and_reliable_keep_dead_letters(redis_url: str, amqp_url: str) -> None:
    for url in (redis_url, amqp_url):
        assert presets.production(url)["celery_kit_dead_letters"] is True
        assert presets.reliable(url)["celery_kit_dead_letters"] is True
        assert "celery_kit_dead_letters" not in presets.low_latency(url)
    assert "celery_kit_dead_letters" not in presets.production("memory://")


def test_an_eager_call_leaves_no_dead_letter(unique: str, redis_url: str) -> None:
    app = Celery(f"e-{unique}", broker=redis_url, set_as_current=False)
    app.conf.celery_kit_dead_letter_prefix = f"dlq-{unique}"
    instrument(app, logging=False, metrics=False, alerts=None, health=False, dead_letters=True)

    @validated_task(app, name="shop.fail", shared=False, time_limit=10)
    def fail() -> None:
        raise ValueError("no")

    assert fail.apply().state == "FAILURE"
    with DeadLetterStore.for_app(app) as store:
        assert store.ids() == []


def test_a_failed_write_is_logged_and_counted_and_never_raises(
    unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    from ._support import free_port

    app = Celery(f"w-{unique}", broker=f"redis://127.0.0.1:{free_port()}/0", set_as_current=False)
    registry = CollectorRegistry()
    instrument(
        app,
        logging=False,
        alerts=None,
        health=False,
        dead_letters=True,
        metrics_port=0,
        metrics_registry=registry,
    )
    observer = app._celery_kit_dead_letters
    with caplog.at_level(logging.ERROR, logger="celery_kit.deadletter"):
        assert observer.write(entry("a", task="shop.ship")) is False
    assert "could not store the dead letter of shop.ship[a]" in caplog.text
    assert "ConnectionError" in caplog.text
    assert (
        read_metric("celery_dead_letter_write_failures_total", {"task": "shop.ship"}, registry=registry) == 1
    )


def test_durations_for_purge() -> None:
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("12h") == 43200
    assert parse_duration("90") == 90
    with pytest.raises(Exception, match="duration"):
        parse_duration("soon")


def test_kit_settings_turn_dead_letters_off_or_point_them_elsewhere(redis_url: str) -> None:
    from celery_kit.settings import KitSettings

    assert KitSettings(broker_url=redis_url).celery_config()["celery_kit_dead_letters"] is True
    config = KitSettings(broker_url=redis_url, dead_letters=False).celery_config()
    assert config["celery_kit_dead_letters"] is False
    other = "redis://:pw@other:6379/3"
    app = Celery("shop", set_as_current=False)
    app.config_from_object(
        KitSettings(broker_url="amqp://guest@localhost//", dead_letter_url=other).celery_config()
    )
    assert (store_config(app).backend, store_config(app).url) == ("redis", other)


@pytest.mark.parametrize(
    ("options", "kind", "detail", "redelivered"),
    [
        ({"acks_late": False}, "worker_lost", None, False),
        ({"acks_late": True, "reject_on_worker_lost": True}, "worker_lost", None, True),
        ({"acks_late": True, "reject_on_worker_lost": False}, "worker_lost", None, False),
        ({"acks_late": True}, "timeout", "hard", False),
        ({"acks_late": True, "acks_on_failure_or_timeout": False}, "timeout", "hard", True),
    ],
)
def test_a_main_process_failure_is_kept_only_when_it_will_not_come_back(
    unique: str, options: dict[str, Any], kind: str, detail: str | None, redelivered: bool
) -> None:
    from celery_kit import FailureKind, TaskEvent
    from celery_kit._events import EventType
    from celery_kit.deadletter._capture import _redelivered

    app = Celery(f"r-{unique}", set_as_current=False)

    @app.task(name="shop.t", shared=False, **options)  # type: ignore[untyped-decorator]
    def t() -> None: ...

    event = TaskEvent(EventType.FAILED, "shop.t", "id", kind=FailureKind(kind), final=True, detail=detail)
    assert _redelivered(app.tasks["shop.t"], event) is redelivered


def test_the_command_line_prints_one_json_document_per_command(broker_app: Celery) -> None:
    from click.testing import CliRunner

    from celery_kit.cli import kit

    @validated_task(broker_app, name="shop.ship", shared=False)
    def ship(order_id: int, api_key: str) -> None: ...

    class Context:
        app = broker_app

    def run(*args: str) -> Any:
        out = CliRunner().invoke(kit, ["dlq", *args], obj=Context())
        return out.exit_code, out.output

    ids = [str(uuid.uuid4()) for _ in range(3)]
    with DeadLetterStore.for_app(broker_app) as store:
        for task_id in ids:
            store.put(_failed_message(broker_app, "shop.ship", {"order_id": 7, "api_key": SECRET}, task_id))
    code, text = run("stats", "--json")
    assert code == 0
    assert json.loads(text)["by_task"] == {"shop.ship": 3}
    code, text = run("list", "--task", "shop.ship")
    assert code == 0
    assert "3 dead letter(s) of shop.ship" in text
    assert SECRET not in text
    code, text = run("show", "nope")
    assert code == 1
    assert "no dead letter 'nope'" in text
    code, text = run("replay")
    assert code == 2  # usage: ids or --all
    code, text = run("replay", ids[0], "--json")
    assert code == 0
    assert json.loads(text)["replayed"] == [ids[0]]
    code, text = run("purge", ids[1], "missing", "--json")
    assert code == 1  # one of them was not there
    assert json.loads(text) == {"purged": 1}
    code, text = run("purge", "--older-than", "7d")
    assert code == 0
    assert "0 dead letter(s) purged" in text
    code, text = run("replay", "--all", "--task", "shop.ship")
    assert code == 0
    assert f"replayed {ids[2]}" in text
    code, text = run("purge", "--all")
    assert code == 0
    assert "0 dead letter(s) purged" in text
    assert sorted(m.headers["id"] for m in _drain(broker_app)) == sorted([ids[0], ids[2]])


def test_uninstrument_takes_the_capture_off_the_app(unique: str, redis_url: str) -> None:
    from celery_kit import uninstrument

    app = Celery(f"u-{unique}", broker=redis_url, set_as_current=False)
    instrument(app, logging=False, metrics=False, alerts=None, health=False, dead_letters=True)
    assert app._celery_kit_keep_rejected is not None
    uninstrument(app)
    assert getattr(app, "_celery_kit_keep_rejected", None) is None
    dispatcher = getattr(app, "_celery_kit_dispatcher", None)
    observers = dispatcher.observers if dispatcher is not None else ()
    assert not any(isinstance(o, DeadLetterObserver) for o in observers)


def test_reading_an_empty_rabbitmq_store_creates_no_stream(unique: str, amqp_url: str) -> None:
    app = Celery(f"s-{unique}", broker=amqp_url, set_as_current=False)
    app.conf.celery_kit_dead_letter_prefix = f"dlq-{unique}"
    with DeadLetterStore.for_app(app) as store:
        assert (store.list(), store.stats().total, store.trim(), store.purge(all=True)) == ([], 0, [], 0)
    with app.connection_for_write() as conn, pytest.raises(conn.channel_errors):
        conn.default_channel.queue_declare(f"dlq-{unique}", passive=True)
