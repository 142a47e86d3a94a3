"""What a store backend does: the few atomic operations the store is built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ._entry import DeadLetter

__all__ = ["Backend", "Claim", "Counts", "PutResult"]


@dataclass(frozen=True)
class PutResult:
    #: False when the entry replaced one with the same id (a redelivered message).
    new: bool
    #: Task names of the entries retention dropped to make room, oldest first.
    dropped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    """A replay's claim: ``entry`` is set when ``token`` holds it; ``holder`` when another does."""

    entry: DeadLetter | None
    holder: str | None = None


@dataclass(frozen=True)
class Counts:
    by_task: dict[str, int]
    dropped: dict[str, int]


class Backend(Protocol):
    name: str
    location: str

    def put(self, entry: DeadLetter, now: float, max_entries: int, max_age: float) -> PutResult: ...

    def trim(self, now: float, max_entries: int, max_age: float) -> list[str]: ...

    def entries(self) -> list[DeadLetter]:
        """Every entry, oldest first."""
        ...

    def get(self, entry_id: str) -> DeadLetter | None: ...

    def claim(self, entry_id: str, token: str, now: float, timeout: float) -> Claim | None:
        """``None``: no such entry."""
        ...

    def release(self, entry_id: str, token: str) -> bool: ...

    def keep(self, entry: DeadLetter, token: str) -> bool:
        """Replace the claimed entry (a new reason) and release the claim."""
        ...

    def remove(self, entry_id: str, token: str) -> bool: ...

    def purge(self, ids: list[str] | None, before: float | None) -> int:
        """Remove ``ids``, or entries stored before ``before``, or (both ``None``) all."""
        ...

    def counts(self) -> Counts: ...

    def close(self) -> None: ...
