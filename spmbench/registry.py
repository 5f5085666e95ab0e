"""A registry: names to things, with "did you mean" errors (one per kind: models, erasers, apps)."""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar


T = TypeVar("T")


def slug(text: str) -> str:
    """A name as a file name part: lowercase words joined by '-' (targets in run folders)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


TARGETS_NAME_MAX = 160  # file systems allow 255 bytes a name: room for a fit key before and a suffix after


def targets_slug(targets: Iterable[str], part: Callable[[str], str] = slug) -> str:
    """Targets as one file name part: each one's `part` joined by '+'. A list too long for a file name (40
    targets) keeps its first targets and says how many more, with a hash of the whole list (lists stay apart)."""
    names = [part(t) for t in targets]
    joined = "+".join(names)
    if len(joined) <= TARGETS_NAME_MAX:
        return joined
    head = joined[: TARGETS_NAME_MAX - 40].rsplit("+", 1)[0]
    more = len(names) - head.count("+") - 1
    return f"{head}+{more}-more-{hashlib.sha256(joined.encode()).hexdigest()[:10]}"


class UnknownName(KeyError):
    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UnknownName(f"unknown {self.kind} {name!r}: {hint}available: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._items)
