"""Check the rest of a canvas before its first message is published.

Celery publishes a chain's first step with the remaining steps embedded in its message,
and a chord's header members with the body in theirs; a callback (``link``) travels in
the message too. Those steps run later, on a worker, with the previous result put in
front of their arguments. A step that cannot fit fails there, after the first task did
its work. :func:`check_canvas_options` checks them all in the caller instead, with the
argument count each will really get, so an invalid canvas publishes nothing.

Only kit tasks with a declared signature are checked; steps naming tasks this process
does not know (another service's) are left to the worker that runs them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from celery.canvas import Signature, _chain, _chord, group

__all__ = ["check_canvas_options"]


def check_canvas_options(options: Mapping[str, Any], link: Any) -> None:
    """Check the steps a message carries for later: its chain, chord body and callbacks.

    Raises:
        pydantic.ValidationError: a step cannot fit its task's signature with the
            previous result in front of its arguments.
    """
    for step in options.get("chain") or ():
        _check(step, prepended=1)
    body = options.get("chord")
    if body is not None:
        _check(body, prepended=1)  # the list of the header's results
    for callback in _as_list(link):
        _check(callback, prepended=1)


def _as_list(value: Any) -> Iterable[Any]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return value
    return (value,)


def _check(sig: Any, *, prepended: int) -> None:
    if not isinstance(sig, Signature):
        return  # a serialised step (a dict): it was checked when its canvas was built
    if isinstance(sig, _chord):
        for member in sig.tasks:
            _check(member, prepended=prepended)
        if sig.body is not None:
            _check(sig.body, prepended=1)
        return
    if isinstance(sig, group):
        for member in sig.tasks:
            _check(member, prepended=prepended)
        return
    if isinstance(sig, _chain):
        for index, step in enumerate(sig.tasks):
            _check(step, prepended=prepended if index == 0 else 1)
        return
    try:
        task = sig.type
    except Exception:  # not registered here: another service's task
        return
    schema = getattr(task, "payload_schema", None)
    if schema is None or not schema.validates or not getattr(task, "typing", True):
        return
    if sig.immutable:
        # Complete: it travels inside this message, so it goes in its wire form (a model
        # as JSON data), as the task's own delay() would send it.
        sig.args, sig.kwargs = schema.to_wire(sig.args, sig.kwargs)
        return
    schema.check_partial(sig.args, sig.kwargs, prepended=prepended, complete=True)
