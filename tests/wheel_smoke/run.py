"""``make wheel-smoke``: build the wheel, install it with one documented extra into a clean
virtualenv, and run a real worker from there (``smoke_app.py``), on Redis and on RabbitMQ.

An editable install with the dev extras hides a dependency the package forgot to declare
(a broker transport's own requirements); a clean virtualenv per install does not. Uses the
standard library only, so any Python 3 runs it; the brokers come from the same variables as
the test suite's (``CELERY_KIT_TEST_REDIS_URL``, ``CELERY_KIT_TEST_AMQP_URL``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REDIS_URL = os.environ.get("CELERY_KIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
AMQP_URL = os.environ.get("CELERY_KIT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

#: (name, pip requirement suffix, broker, result backend): what docs/getting-started.md
#: and docs/index.md tell users to install for each broker.
CASES = [
    ("redis", "[redis]", REDIS_URL, REDIS_URL),
    ("rabbitmq", "", AMQP_URL, "rpc://"),
]


def _run(*command: str | Path, **kwargs: object) -> None:
    print("+", " ".join(map(str, command)), flush=True)
    subprocess.run([str(c) for c in command], check=True, **kwargs)  # type: ignore[call-overload]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="celery-kit-wheel-smoke-"))
    try:
        dist = work / "dist"
        _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", dist, ROOT)
        wheels = list(dist.glob("celery_kit-*.whl"))
        if len(wheels) != 1:
            sys.exit(f"wheel smoke FAILED: expected one celery_kit wheel in {dist}, found {wheels}")
        for name, extra, broker, backend in CASES:
            venv = work / f"venv-{name}"
            _run(sys.executable, "-m", "venv", venv)
            python = venv / "bin" / "python"
            _run(python, "-m", "pip", "install", "--quiet", f"{wheels[0]}{extra}")
            app_dir = work / f"app-{name}"  # outside the checkout: nothing of it is importable
            app_dir.mkdir()
            shutil.copy(HERE / "smoke_app.py", app_dir)
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            env.update(
                PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
                SMOKE_BROKER_URL=broker,
                SMOKE_BACKEND_URL=backend,
                SMOKE_QUEUE=f"kit-smoke-{name}-{uuid.uuid4().hex[:10]}",
                SMOKE_METRICS_PORT=str(_free_port()),
            )
            _run(python, "smoke_app.py", cwd=app_dir, env=env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wheel smoke: both brokers ok in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
