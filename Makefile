# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck pytest docs compat wheel-smoke bench bench-instructions bench-quick soak clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,docs]'
	touch $@ $(VENV)/.installed

## Run the quick-start demo: a real prefork worker and a producer on Celery's
## filesystem:// broker and file:// result backend (no server needed).
demo: $(VENV)/.installed
	$(PY) examples/quickstart.py

## Lint, type-check, run every test (integration tests need Redis and RabbitMQ), build the docs.
test: $(VENV)/.installed-dev lint typecheck pytest docs

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev
	$(PY) -m pytest

docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

## Celery's own unit tests (tasks, app, request, canvas) from the installed Celery's sdist, run
## plain and with task_cls="celery_kit:ValidatedTask"; fails on a regression that
## compat/deliberate_differences.toml does not name (see compat/README.md). Own venv: .venv-compat.
compat: $(VENV)/.installed-dev
	$(PY) -m compat.run --python $(PYTHON)

## Build the wheel, install it with only a documented extra into clean virtualenvs (`[redis]`,
## and nothing for RabbitMQ), and run a real worker from each (needs Redis and RabbitMQ).
wheel-smoke: | $(PY)
	$(PY) tests/wheel_smoke/run.py

## Side-by-side benchmarks (needs Redis and RabbitMQ), about 13 minutes: throughput and worker
## CPU per task end to end on real prefork workers (the issue 16 targets), plus in-process and
## producer rows; writes benchmarks/results/latest.json and docs/performance.md.
bench: $(VENV)/.installed-dev
	$(PY) benchmarks/run.py --output benchmarks/results/latest.json --docs docs/performance.md

## Machine instructions per call under valgrind: the noise-free breakdown the performance
## page shows (run it before `make bench`, which writes the page).
bench-instructions: $(VENV)/.installed-dev
	$(PY) benchmarks/instructions.py --output benchmarks/results/instructions.json

## A small run that keeps the harness from rotting (CI, under a minute): every code path,
## including plain_events and CPU per task, at small N; reports, never fails on speed, and
## writes nothing into the repository.
bench-quick: $(VENV)/.installed-dev
	$(PY) benchmarks/run.py --quick --output $${TMPDIR:-/tmp}/celery-kit-bench-quick.json

## The fault suite at soak sizes (100,000 tasks of load, 20,000 through each broker
## restart); rewrites docs/reliability.md with those numbers.
soak: $(VENV)/.installed-dev
	CELERY_KIT_SOAK=1 $(PY) -m pytest tests/faults -p no:cacheprovider --timeout 3600

clean:
	rm -rf $(VENV) .venv-compat .compat site .pytest_cache .mypy_cache .ruff_cache
