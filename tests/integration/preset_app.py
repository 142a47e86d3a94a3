"""The app the preset integration workers import (``-A tests.integration.preset_app``).

``build_preset_app`` configures an app from one preset, with a unique queue routed by
task-name pattern; the worker builds the same app from the environment. The one task
reports the configuration the worker really runs with, so a test can tell that the
worker loaded the preset rather than Celery's defaults.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from pydantic import BaseModel

from celery_kit import ValidatedTask, validated_task
from celery_kit.presets import PRESETS, Preset

TASK_NAME = "kit_presets.echo"


class Ping(BaseModel):
    n: int


class Pong(BaseModel):
    n: int
    preset: str
    acks_late: bool
    prefetch: int
    routing_key: str
    transport_options: dict[str, Any]


def build_preset_app(preset: str, broker_url: str, backend_url: str, queue: str) -> Celery:
    """An app configured by ``preset``; its task is routed to ``queue`` by name pattern."""
    app = Celery(f"kit_presets_{queue}", set_as_current=False)
    app.config_from_object(
        PRESETS[Preset(preset)](
            broker_url,
            backend_url,
            queues={queue: "kit_presets.*"},
            default_queue=f"{queue}-default",
        )
    )

    @validated_task(app, shared=False, bind=True, name=TASK_NAME)
    def echo(self: ValidatedTask, ping: Ping) -> Pong:
        conf = self.app.conf
        return Pong(
            n=ping.n,
            preset=conf.celery_kit_preset,
            acks_late=self.acks_late,
            prefetch=conf.worker_prefetch_multiplier,
            routing_key=self.request.delivery_info["routing_key"],
            transport_options=dict(conf.broker_transport_options),
        )

    return app


if "KIT_PRESET" in os.environ:  # imported by a worker process
    app = build_preset_app(
        os.environ["KIT_PRESET"],
        os.environ["KIT_TEST_BROKER_URL"],
        os.environ["KIT_TEST_BACKEND_URL"],
        os.environ["KIT_TEST_QUEUE"],
    )
