"""Every code block of the docs runs: the examples are tests, not prose.

Each fenced ``python`` (or ``pycon``) block of ``docs/*.md`` is one test, named
``<file>:<line of the opening fence>``; a failure names the doc line that failed. Shell
blocks (``bash``, ``console``) run only when a directive asks. Files other people own are
left out (:data:`NOT_HERE`).

Conventions
===========

A block may be preceded -- the last non-blank line before its fence -- by one HTML
comment, invisible in the rendered docs::

    <!-- test: DIRECTIVE [DIRECTIVE ...] -->

Directives are shell-like words; values with spaces are quoted.

``skip reason="..."``
    Not run. For genuine fragments only: the reason is required, and at most
    :data:`MAX_SKIPPED` blocks in all the docs may be skipped.
``continues``
    Runs in the namespace, working directory and environment the previous block of the
    same file left -- the *chain*. Without it a block starts a chain of its own: a fresh
    namespace (``__name__ == "__main__"``, as for a script). A chain's blocks run in
    order, once; selecting a later block runs the earlier ones first.
``setup=NAME``
    On a chain's first block: prepare the chain with ``SETUPS[NAME]`` first --
    ``app`` (an ``app`` on Celery's in-memory broker), ``redis`` (a real-broker
    environment) or ``email`` (Getting started's task with its worker running); see
    their docstrings.
``file=NAME``
    Not run: written to ``NAME`` in the chain's working directory (importable from the
    chain), and beside every ``pytest`` block. Names are unique across the docs.
``env="K=V ..."``
    Environment variables set while the block runs (what a deployment would set).
``check=NAME``
    After the block ran, ``CHECKS[NAME](namespace)`` asserts what it built.
``run``
    A shell block: run it with ``bash -e -o pipefail`` in the chain's directory and
    environment; it must exit 0.
``background until=TEXT``
    A shell block: start it in the background for the rest of the test module (a
    worker), and wait until ``TEXT`` appears in its output. It is stopped with SIGINT --
    Ctrl-C -- to its process group at the end.
``pytest``
    The block is a pytest test module: it runs in a real inner pytest (``pytester``, in a
    subprocess) with the ``file=`` blocks beside it, ``--celery-kit-broker`` pointing at
    the test Redis, and must pass without skips.

``python`` blocks run with :func:`exec`, ``pycon`` blocks with :mod:`doctest` (their
output is checked). Blocks that start workers or servers run in subprocesses; everything
has a timeout.
"""

from __future__ import annotations

import contextlib
import contextvars
import doctest
import importlib
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import _state as celery_state

from ._support import free_port
from .conftest import RUN_ID

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Docs whose blocks other people's tests own.
NOT_HERE = frozenset({"reliability.md", "performance.md", "examples.md", "changelog.md"})
#: Skipping may not quietly grow: raise this only with a reason in review.
MAX_SKIPPED = 2
#: Fewer blocks than this means the parser lost some.
MIN_BLOCKS = 30

RUNNABLE = frozenset({"python", "pycon"})
SHELL = frozenset({"bash", "sh", "shell", "console"})
FLAGS = frozenset({"continues", "run", "background", "pytest", "skip"})
VALUED = frozenset({"reason", "setup", "file", "env", "check", "until"})
#: Where a Celery app of the docs takes its extra settings from (``CELERY_CONFIG_MODULE``).
CONFIG_MODULE = "docs_celeryconfig"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<lang>[\w+-]*)[^`]*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*test:(?P<words>.*?)-->\s*$")


# -- finding the blocks ----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    doc: str  #: file name inside docs/
    line: int  #: 1-based line of the opening fence
    lang: str
    source: str
    directives: dict[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def where(self) -> str:
        return f"docs/{self.doc}:{self.line}"

    @property
    def active(self) -> bool:
        """Whether the block is a test: python/pycon, or a shell block a directive runs."""
        if self.lang in RUNNABLE:
            return True
        return self.lang in SHELL and ("run" in self.directives or "background" in self.directives)


def _parse_directive(words: str) -> tuple[dict[str, str], list[str]]:
    directives: dict[str, str] = {}
    problems: list[str] = []
    try:
        tokens = shlex.split(words)
    except ValueError as exc:
        return {}, [f"unreadable directive ({exc})"]
    for token in tokens:
        key, sep, value = token.partition("=")
        if key in FLAGS and not sep:
            directives[key] = ""
        elif key in VALUED and sep and value:
            directives[key] = value
        else:
            problems.append(f"unknown directive {token!r}")
    if "skip" in directives and not directives.get("reason"):
        problems.append('skip needs reason="..."')
    if "background" in directives and not directives.get("until"):
        problems.append("background needs until=TEXT")
    return directives, problems


def parse(doc: str, text: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, ticks = opening["indent"], opening["ticks"]
        end = index + 1
        while end < len(lines) and lines[end].strip() != ticks:
            end += 1
        body = [line[len(indent) :] if line.startswith(indent) else line for line in lines[index + 1 : end]]
        before = index - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        directives: dict[str, str] = {}
        problems: list[str] = []
        if before >= 0 and (found := _DIRECTIVE.match(lines[before])):
            directives, problems = _parse_directive(found["words"])
        blocks.append(
            Block(
                doc, index + 1, opening["lang"].lower(), "\n".join(body) + "\n", directives, tuple(problems)
            )
        )
        index = end + 1
    return blocks


def all_blocks() -> list[Block]:
    found: list[Block] = []
    for path in sorted(DOCS.glob("*.md")):
        if path.name not in NOT_HERE:
            found.extend(parse(path.name, path.read_text(encoding="utf-8")))
    return found


BLOCKS = all_blocks()
TESTS = [block for block in BLOCKS if block.active]


def _chains() -> dict[str, list[Block]]:
    """Chain head id -> its blocks, in order."""
    chains: dict[str, list[Block]] = {}
    last: dict[str, list[Block]] = {}
    for block in TESTS:
        if "skip" in block.directives or "pytest" in block.directives:
            continue
        if "continues" in block.directives and block.doc in last:
            last[block.doc].append(block)
        else:
            chains[block.id] = last[block.doc] = [block]
    return chains


CHAINS = _chains()
HEAD_OF = {block.id: head for head, members in CHAINS.items() for block in members}
FILES = {block.directives["file"]: block for block in TESTS if "file" in block.directives}


# -- what blocks may ask for ----------------------------------------------------------------


class Chain:
    """Blocks that share a namespace, a working directory and an environment."""

    def __init__(self, blocks: list[Block], workdir: Path) -> None:
        self.blocks = blocks
        self.workdir = workdir
        self.namespace: dict[str, Any] = {"__name__": "__main__"}
        #: Set while each block runs, in this process and in the subprocesses.
        self.env: dict[str, str] = {}
        #: Subprocesses only (``TMPDIR`` must not move under the test process).
        self.process_env: dict[str, str] = {}
        #: Literal text replaced in every block of the chain (a port in use here).
        self.replace: dict[str, str] = {}
        self.outcomes: dict[str, str | None] = {}  # block id -> failure message, None = passed
        self.background: list[Background] = []
        self.cleanups: list[Callable[[], None]] = []

    def source(self, block: Block) -> str:
        text = block.source
        for old, new in self.replace.items():
            text = text.replace(old, new)
        return text

    def subprocess_env(self) -> dict[str, str]:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        pythonpath = os.pathsep.join(p for p in (str(self.workdir), os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PATH": path, "PYTHONPATH": pythonpath, **self.env, **self.process_env}

    def close(self) -> None:
        for process in reversed(self.background):
            process.stop()
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()


class Background:
    """A shell block running in its own process group, its output in a file."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.log = cwd / f"background-{uuid.uuid4().hex[:6]}.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                ["bash", "-c", command],
                cwd=cwd,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"exited with {self.process.returncode} before {text!r}:\n{self.output()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} after {timeout:g}s:\n{self.output()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Ctrl-C, as in the terminal the docs talk about: SIGINT to the process group."""
        group = self.process.pid
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        with contextlib.suppress(ProcessLookupError):  # anything of ours the shell left behind
            os.killpg(group, signal.SIGKILL)


def _test_redis(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_url"))  # fails, never skips, when Redis is down


def _config_module(directory: Path, *, queue: str, metrics_port: int) -> None:
    (directory / f"{CONFIG_MODULE}.py").write_text(
        f"# Settings the docs' apps take from CELERY_CONFIG_MODULE while they are tested.\n"
        f"task_default_queue = {queue!r}  # a queue no other run consumes\n"
        f"celery_kit_metrics_port = {metrics_port}\n"
        f"result_expires = 600\n"
        f"celery_kit_dead_letter_prefix = {'docs-dlq-' + queue!r}  # a store of its own\n"
    )


def setup_app(chain: Chain, request: pytest.FixtureRequest) -> None:
    """``app``: a Celery app on the in-memory broker and result backend, for blocks that
    show one task or one call of an app you already have."""
    from celery import Celery

    app = Celery("docs", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.update(
        task_default_queue=f"docs-{RUN_ID}-{uuid.uuid4().hex[:6]}", broker_connection_retry_on_startup=False
    )
    chain.namespace["app"] = app
    chain.cleanups.append(app.close)


def setup_redis(chain: Chain, request: pytest.FixtureRequest) -> None:
    """``redis``: the chain's Celery apps -- in this process and in its subprocesses -- use
    the test Redis (Celery reads ``CELERY_BROKER_URL``/``CELERY_RESULT_BACKEND`` before
    the URLs written in code), a queue of their own and a free metrics port (from
    ``CELERY_CONFIG_MODULE``; ``9808`` in the chain's blocks is replaced by it), and
    subprocesses get the chain's directory as ``TMPDIR`` (health state files, metrics
    files). The chain's directory is importable while the module runs."""
    url = _test_redis(request)
    port = free_port()
    queue = f"docs-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    _config_module(chain.workdir, queue=queue, metrics_port=port)
    # Chains stay open until the module ends: an app of this chain must import this
    # chain's settings, not another open chain's module of the same name.
    sys.modules.pop(CONFIG_MODULE, None)
    chain.env.update(CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=url, CELERY_CONFIG_MODULE=CONFIG_MODULE)
    chain.process_env["TMPDIR"] = str(chain.workdir)
    chain.replace["9808"] = str(port)
    sys.path.insert(0, str(chain.workdir))
    importlib.invalidate_caches()

    def forget() -> None:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(chain.workdir))
        for name, module in list(sys.modules.items()):
            if str(chain.workdir) in str(getattr(module, "__file__", None) or ""):
                app = getattr(module, "app", None)
                if app is not None and hasattr(app, "close"):
                    app.close()
                del sys.modules[name]

    chain.cleanups.append(forget)


def setup_email(chain: Chain, request: pytest.FixtureRequest) -> None:
    """``email``: ``app``, ``EmailPayload``, ``EmailSent`` and ``send_email`` from Getting
    started's ``tasks.py``, with the worker that page starts consuming them (its chain
    runs up to the worker first)."""
    tasks = FILES["tasks.py"]
    source = runner.chain(tasks, request)
    worker = next(block for block in source.blocks if "background" in block.directives)
    failure = runner.run(worker, request)
    if failure is not None:
        raise AssertionError(f"setup=email needs {worker.where} (the worker), which failed:\n{failure}")
    chain.env.update(source.env)
    with _environment(chain.env):
        module = importlib.import_module("tasks")
    if Path(str(module.__file__)).parent != source.workdir:
        raise AssertionError(f"`import tasks` found {module.__file__}, not {source.workdir / 'tasks.py'}")
    for name in ("app", "EmailPayload", "EmailSent", "send_email"):
        chain.namespace[name] = getattr(module, name)


SETUPS: dict[str, Callable[[Chain, pytest.FixtureRequest], None]] = {
    "app": setup_app,
    "redis": setup_redis,
    "email": setup_email,
}


def check_presets_opening(namespace: dict[str, Any]) -> None:
    from celery_kit.presets import check

    conf = namespace["app"].conf
    assert conf.celery_kit_preset == "reliable"
    assert conf.task_routes == {
        "app.tasks.email.*": {"queue": "email"},
        "app.tasks.reports.*": {"queue": "reports"},
    }
    assert conf.task_annotations == {"*": {"rate_limit": "100/m"}}
    assert check(conf, log=False) == []


def check_getting_started_result(namespace: dict[str, Any]) -> None:
    sent = namespace["sent"]
    assert type(sent).__name__ == "EmailSent", repr(sent)
    assert sent.message_id == "<Hi@example.com>", repr(sent)


def check_settings(namespace: dict[str, Any]) -> None:
    assert namespace["settings"].broker_url.get_secret_value() == "redis://localhost:6379/0"
    assert namespace["app"].conf.celery_kit_preset == "production"


CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "presets_opening": check_presets_opening,
    "getting_started_result": check_getting_started_result,
    "settings": check_settings,
}


# -- running them ------------------------------------------------------------------------------


@contextlib.contextmanager
def _celery_isolated() -> Iterator[None]:
    """What a block does to Celery's process-wide state stays in the block.

    ``Celery(...)`` makes itself the current app, and ``@app.task`` (``shared=True``)
    adds the task to every app finalized later in the process: the docs' many apps and
    tasks must reach neither each other nor the rest of the test session.
    """
    current = getattr(celery_state._tls, "current_app", None)
    default = celery_state.default_app
    finalizers = set(celery_state._on_app_finalizers)
    try:
        yield
    finally:
        celery_state._tls.current_app = current
        celery_state.default_app = default
        celery_state._on_app_finalizers.intersection_update(finalizers)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _block_env(block: Block) -> dict[str, str]:
    pairs = shlex.split(block.directives.get("env", ""))
    return dict(pair.split("=", 1) for pair in pairs)


def _doc_frames(block: Block, exc: BaseException) -> str:
    """The doc line the exception came from, and the traceback."""
    where = block.where
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == f"docs/{block.doc}":
            where = f"docs/{block.doc}:{frame.lineno}"
    text = "".join(traceback.format_exception(exc))
    return f"{where}: {type(exc).__name__}: {exc}\n\n{text}"


def _run_python(chain: Chain, block: Block) -> str | None:
    try:
        code = compile("\n" * block.line + chain.source(block), f"docs/{block.doc}", "exec")
        contextvars.copy_context().run(exec, code, chain.namespace)  # structlog contexts stay here
    except Exception as exc:
        return _doc_frames(block, exc)
    return None


def _run_pycon(chain: Chain, block: Block) -> str | None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(chain.source(block), chain.namespace, block.id, f"docs/{block.doc}", block.line)
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    contextvars.copy_context().run(runner.run, test, out=out.write, clear_globs=False)
    if runner.failures:
        return f"{block.where}: {runner.failures} example(s) failed\n{out.getvalue()}"
    return None


def _run_shell(chain: Chain, block: Block) -> str | None:
    source = chain.source(block)
    env = chain.subprocess_env()
    if "background" in block.directives:
        process = Background(source, chain.workdir, env)
        chain.background.append(process)
        try:
            process.wait_for(block.directives["until"])
        except AssertionError as exc:
            return f"{block.where}: `{source.strip()}` {exc}"
        return None
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", source],
        cwd=chain.workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        output = f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        return f"{block.where}: exit status {done.returncode}\n{output}"
    return None


class Runner:
    """Runs chains lazily, in order, once; remembers each block's outcome."""

    def __init__(self) -> None:
        self.chains: dict[str, Chain] = {}
        self.factory: pytest.TempPathFactory | None = None

    def chain(self, block: Block, request: pytest.FixtureRequest) -> Chain:
        head = HEAD_OF[block.id]
        if head not in self.chains:
            factory = request.getfixturevalue("tmp_path_factory")
            workdir = factory.mktemp(re.sub(r"\W", "-", head))
            self.chains[head] = Chain(CHAINS[head], workdir)
        return self.chains[head]

    def run(self, block: Block, request: pytest.FixtureRequest) -> str | None:
        chain = self.chain(block, request)
        for member in chain.blocks:
            if member.id not in chain.outcomes:
                failed = [b for b in chain.blocks if chain.outcomes.get(b.id)]
                if failed:
                    chain.outcomes[member.id] = f"not run: {failed[0].where} earlier in its chain failed"
                else:
                    chain.outcomes[member.id] = self._execute(chain, member, request)
            if member is block:
                break
        return chain.outcomes[block.id]

    def _execute(self, chain: Chain, block: Block, request: pytest.FixtureRequest) -> str | None:
        with _celery_isolated():
            return self._execute_block(chain, block, request)

    def _execute_block(self, chain: Chain, block: Block, request: pytest.FixtureRequest) -> str | None:
        if block.problems:
            return f"{block.where}: " + "; ".join(block.problems)
        setup = block.directives.get("setup")
        if setup is not None:
            if block is not chain.blocks[0]:
                return f"{block.where}: setup= belongs on the first block of a chain"
            try:
                SETUPS[setup](chain, request)
            except Exception as exc:
                return f"{block.where}: setup={setup} failed: {type(exc).__name__}: {exc}"
        if "file" in block.directives:
            name = block.directives["file"]
            source = chain.source(block)
            if name.endswith(".py"):
                compile(source, f"docs/{block.doc}", "exec")  # a syntax error fails here, with its line
                sys.modules.pop(name[:-3], None)
            (chain.workdir / name).write_text(source)
            importlib.invalidate_caches()
            return None
        with _environment({**chain.env, **_block_env(block)}):
            if block.lang == "python":
                failure = _run_python(chain, block)
            elif block.lang == "pycon":
                failure = _run_pycon(chain, block)
            else:
                failure = _run_shell(chain, block)
            if failure is None and "check" in block.directives:
                try:
                    CHECKS[block.directives["check"]](chain.namespace)
                except Exception as exc:
                    text = "".join(traceback.format_exception(exc))
                    failure = (
                        f"{block.where}: check={block.directives['check']} failed after the block:\n{text}"
                    )
        return failure

    def close(self) -> None:
        for chain in reversed(list(self.chains.values())):
            chain.close()
        self.chains.clear()


runner = Runner()


@pytest.fixture(scope="module", autouse=True)
def _close_chains() -> Iterator[None]:
    yield
    runner.close()


def _run_pytest_block(block: Block, request: pytest.FixtureRequest) -> str | None:
    pytester: pytest.Pytester = request.getfixturevalue("pytester")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    url = _test_redis(request)
    for name, file_block in FILES.items():
        (pytester.path / name).write_text(file_block.source)
    _config_module(pytester.path, queue=f"docs-{RUN_ID}-{uuid.uuid4().hex[:6]}", metrics_port=0)
    stem = re.sub(r"\W", "_", block.doc.removesuffix(".md"))
    test_file = pytester.path / f"test_{stem}_{block.line}.py"
    test_file.write_text("\n" * block.line + block.source)  # the doc's line numbers
    for key, value in {
        "CELERY_BROKER_URL": url,
        "CELERY_RESULT_BACKEND": url,
        "CELERY_CONFIG_MODULE": CONFIG_MODULE,
        "PYTHONPATH": str(pytester.path),
        "TMPDIR": str(pytester.path),
    }.items():
        monkeypatch.setenv(key, value)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--celery-kit-broker={url}", test_file.name, timeout=120
    )
    outcomes = result.parseoutcomes()
    extra = {k: v for k, v in outcomes.items() if k not in ("passed", "warnings", "warning")}
    if result.ret != 0 or not outcomes.get("passed") or extra:
        output = f"{result.stdout.str()}\n{result.stderr.str()}"
        return f"{block.where}: the inner pytest run gave {outcomes}\n{output}"
    return None


@pytest.mark.timeout(150)
@pytest.mark.parametrize("block", TESTS, ids=[block.id for block in TESTS])
def test_doc_block(block: Block, request: pytest.FixtureRequest) -> None:
    if "skip" in block.directives and not block.problems:
        pytest.skip(f"{block.where}: {block.directives['reason']}")
    if "pytest" in block.directives:
        failure = _run_pytest_block(block, request)
    else:
        failure = runner.run(block, request)
    if failure is not None:
        pytest.fail(failure, pytrace=False)


def test_conventions() -> None:
    """The directives are known and used as documented, and skipping stays rare."""
    problems = [f"{block.where}: {p}" for block in BLOCKS for p in block.problems]
    for block in BLOCKS:
        d = block.directives
        if d and not block.active and "skip" not in d:
            problems.append(f"{block.where}: a {block.lang or 'plain'} block with directives is never run")
        if "setup" in d and d["setup"] not in SETUPS:
            problems.append(f"{block.where}: unknown setup={d['setup']} (known: {sorted(SETUPS)})")
        if "check" in d and d["check"] not in CHECKS:
            problems.append(f"{block.where}: unknown check={d['check']} (known: {sorted(CHECKS)})")
        if ("run" in d or "background" in d) and block.lang not in SHELL:
            problems.append(f"{block.where}: run/background are for shell blocks")
        if "pytest" in d and (block.lang != "python" or "continues" in d):
            problems.append(f"{block.where}: a pytest block is a python block of its own")
        if "continues" in d and HEAD_OF.get(block.id) == block.id:
            problems.append(f"{block.where}: continues, but no earlier block in {block.doc} to continue")
        if "continues" in d and "setup" in d:
            problems.append(f"{block.where}: setup= belongs on the first block of a chain")
    names = [block.directives["file"] for block in BLOCKS if "file" in block.directives]
    problems += [f"file={name} is written by two blocks" for name in set(names) if names.count(name) > 1]
    used = {block.directives.get("check") for block in BLOCKS}
    problems += [f"CHECKS[{name!r}] is used by no block" for name in CHECKS if name not in used]
    assert not problems, "\n".join(problems)

    skipped = [block for block in TESTS if "skip" in block.directives]
    assert len(skipped) <= MAX_SKIPPED, [f"{b.where}: {b.directives['reason']}" for b in skipped]
    assert len(TESTS) >= MIN_BLOCKS, f"only {len(TESTS)} runnable blocks found in docs/"


def test_every_python_fence_is_found() -> None:
    """A fence the parser misses would be a doc example nobody runs."""
    for path in sorted(DOCS.glob("*.md")):
        if path.name in NOT_HERE:
            continue
        fences = re.findall(r"^[ \t]*```(?:python|pycon)\s*$", path.read_text(encoding="utf-8"), re.M)
        found = [b for b in BLOCKS if b.doc == path.name and b.lang in RUNNABLE]
        assert len(found) == len(fences), path.name
