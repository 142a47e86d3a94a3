"""``make compat``: run Celery's own unit tests with and without ValidatedTask as the default.

1. Read the Celery version installed beside this interpreter (the project venv), download
   that version's sdist from the package index into ``.compat/`` (once) and extract its
   ``t/`` tree and ``pyproject.toml`` (the pytest settings Celery's tests expect).
2. Build ``.venv-compat`` (once; re-installed when the requirements or pyproject change):
   the kit editable from this checkout, the same Celery, and what the files need
   (TEST_REQUIREMENTS) at the pins of the sdist's ``requirements/``. Its own venv, so
   neither the project's pytest plugins nor its dev tools change what Celery's tests see.
3. Run the files twice, plain and with ``-p compat.kit_default_task_cls``, each writing
   per-test outcomes (``compat.record_outcomes``); then judge with ``compat.compare``.
   ``--kit-src`` puts another checkout's ``src/`` first in both runs (read-only: no bytecode
   is written) and takes that checkout's docs/migration.md for the entries' sections.

Exit status: 0 no undocumented regression and no stale entry, 1 otherwise, 2 when the job
could not judge (download, install or a pytest run that did not finish).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

from compat.compare import HarnessError, compare, load_differences, load_outcomes, migration_sections, summary

ROOT = Path(__file__).resolve().parent.parent
#: Celery's test files the job runs (the ones issue 14 measured).
TEST_PATHS = (
    "t/unit/tasks/",
    "t/unit/app/test_app.py",
    "t/unit/worker/test_request.py",
    "t/unit/test_canvas.py",
)
#: What these files need, at Celery's own pins (name -> the sdist's requirements file).
#: pytest >= 9 has subtests built in (test_stamping uses them); freezegun for test_request;
#: pytest-timeout so that a test the kit makes hang fails alone (PER_TEST_TIMEOUT) instead
#: of stalling CI; cryptography (celery[auth]): test_app's test_setup_security imports
#: celery.security; tblib (celery[tblib]): test_result's remote tracebacks. One test stays
#: skipped: it needs Python 3.14 (PEP 649).
#: Not installed: pytest-celery (the conftest imports celery.contrib.pytest directly),
#: pytest-rerunfailures (Celery's pyproject declares its marker, these files use none, and a
#: rerun would hide a flaky regression), moto/boto3 and backend extras (no backend tests).
TEST_REQUIREMENTS = {
    "pytest": "requirements/test.txt",
    "freezegun": "requirements/test.txt",
    "pytest-timeout": "requirements/test.txt",
    "cryptography": "requirements/extras/auth.txt",
    "tblib": "requirements/extras/tblib.txt",
}
#: Seconds one test may take; Celery's unit tests take well under one each.
PER_TEST_TIMEOUT = 120


def log(message: str) -> None:
    print(f"[compat] {message}", flush=True)


def run(command: list[str], **kwargs: object) -> None:
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def fetch_tests(version: str, cache: Path, python: str) -> Path:
    """Download celery's sdist once and extract ``t/`` and ``pyproject.toml`` beside it."""
    tree = cache / f"celery-{version}"
    if (tree / ".extracted").exists():
        return tree
    sdist = cache / f"celery-{version}.tar.gz"
    if not sdist.exists():
        log(f"downloading the celery {version} sdist from the package index")
        pip = [python, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps"]
        run([*pip, "-d", str(cache), f"celery=={version}"])
    prefix = f"celery-{version}/"
    wanted = ("t/", "pyproject.toml", "requirements/")
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            relative = member.name.removeprefix(prefix)
            if member.name.startswith(prefix) and relative.startswith(wanted):
                member.name = relative
                members.append(member)
        archive.extractall(tree, members=members, filter="data")
    (tree / ".extracted").touch()
    return tree


def test_pins(tree: Path) -> list[str]:
    """``name==version`` for TEST_REQUIREMENTS as Celery's requirements files pin them."""
    pins = []
    for name, file in TEST_REQUIREMENTS.items():
        path = tree / file
        text = path.read_text() if path.exists() else ""
        match = re.search(rf"^{re.escape(name)}==([^\s;#]+)", text, re.MULTILINE)
        pins.append(f"{name}=={match.group(1)}" if match else name)
    return pins


def ensure_venv(venv: Path, python: str, requirements: list[str]) -> Path:
    """Create or refresh the compat venv; a marker records what it was built with."""
    interpreter = venv / "bin" / "python"
    stamp = json.dumps(
        {
            "requirements": requirements,
            "pyproject": hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest(),
        }
    )
    marker = venv / ".compat-installed"
    if interpreter.exists() and marker.exists() and marker.read_text() == stamp:
        return interpreter
    if not interpreter.exists():
        log(f"creating {venv.name}")
        run([python, "-m", "venv", str(venv)])
    log(f"installing into {venv.name}: -e . {' '.join(requirements)}")
    run([str(interpreter), "-m", "pip", "install", "--quiet", "-e", str(ROOT), *requirements])
    marker.write_text(stamp)
    return interpreter


def run_tests(
    interpreter: Path, tree: Path, name: str, out: Path, *, kit: bool, kit_src: str | None
) -> float:
    """One pytest run over TEST_PATHS; returns its duration. Output goes to ``out/<name>.log``."""
    outcomes = out / f"outcomes-{name}.json"
    outcomes.unlink(missing_ok=True)
    command = [
        str(interpreter),
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "compat.record_outcomes",
    ]
    command += [f"--compat-outcomes={outcomes}", f"--timeout={PER_TEST_TIMEOUT}"]
    if kit:
        command += ["-p", "compat.kit_default_task_cls"]
    command += list(TEST_PATHS)
    # The kit is installed in both runs, as in a user's environment: both import the same src/.
    paths = [str(ROOT)]
    if kit_src:
        paths.insert(0, kit_src)
    # No bytecode files: a run may import another checkout's src/ read-only.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONDONTWRITEBYTECODE": "1"}
    env["COMPAT_EXPECT_KIT_FROM"] = kit_src or str(ROOT / "src")
    log_file = out / f"{name}.log"
    started = time.monotonic()
    with log_file.open("w") as stream:
        result = subprocess.run(
            command, cwd=tree, env=env, stdout=stream, stderr=subprocess.STDOUT, check=False
        )
    duration = time.monotonic() - started
    # 0 all passed, 1 some failed: both are results. Anything else means no verdict.
    if result.returncode not in (0, 1) or not outcomes.exists():
        tail = "\n".join(log_file.read_text().splitlines()[-30:])
        raise HarnessError(f"the {name} run exited {result.returncode} without results:\n{tail}")
    log(f"{name} run: {duration:.0f} s ({log_file.relative_to(ROOT)})")
    return duration


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--python", default="python3", help="interpreter for the compat venv")
    parser.add_argument("--cache", type=Path, default=ROOT / ".compat", help="sdist, tests and logs")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-compat")
    parser.add_argument("--differences", type=Path, default=ROOT / "compat" / "deliberate_differences.toml")
    parser.add_argument(
        "--migration", type=Path, help="the page entries cite (default: docs/migration.md beside the src/)"
    )
    parser.add_argument(
        "--kit-src", help="put this src/ first on both runs' path (judge another checkout's code)"
    )
    parser.add_argument(
        "--reuse-baseline",
        action="store_true",
        help="keep the last baseline outcomes if present (whatever src/ they ran with)",
    )
    parser.add_argument("--report", type=Path, help="also write the summary to this file")
    args = parser.parse_args(argv)
    kit_src = str(Path(args.kit_src).resolve()) if args.kit_src else None
    cache: Path = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    try:
        version = importlib.metadata.version("celery")
        tree = fetch_tests(version, cache, sys.executable)
        interpreter = ensure_venv(args.venv.resolve(), args.python, [f"celery=={version}", *test_pins(tree)])
        differences = load_differences(args.differences)
        src = Path(kit_src or ROOT / "src")
        migration = args.migration or src.parent / "docs" / "migration.md"
        sections = migration_sections(migration.read_text()) if migration.exists() else set()
        log(f"celery {version}: {' '.join(TEST_PATHS)}")
        durations = {}
        if not (args.reuse_baseline and (cache / "outcomes-baseline.json").exists()):
            durations["baseline"] = run_tests(
                interpreter, tree, "baseline", cache, kit=False, kit_src=kit_src
            )
        durations["kit"] = run_tests(interpreter, tree, "kit", cache, kit=True, kit_src=kit_src)
        verdict = compare(
            load_outcomes(cache / "outcomes-baseline.json"),
            load_outcomes(cache / "outcomes-kit.json"),
            differences,
            sections,
        )
    except (HarnessError, subprocess.CalledProcessError, OSError) as exc:
        log(f"could not judge: {exc}")
        return 2
    text = summary(verdict)
    print(text)
    if args.report:
        header = (
            f"# make compat, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, celery {version}, "
            f"kit from {src}; runs: "
            + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in durations.items())
        )
        args.report.write_text(header + "\n" + text + "\n")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
