"""Seeded mutations of a valid file, for fuzzing loaders: each loader must turn every mutant into its
result or into one of its documented errors, never into another exception (a traceback to a user).

No fuzzing library: the mutations are few kinds, seeded, and fast enough for the default test run.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterator
from typing import Any


ODD_VALUES = [None, True, False, 0, -1, 3.5, -(10**30), 10**400, math.nan, math.inf, "", "x" * 5000, "\x00",
              [], {}, [1, "a", None], {"a": None}, {"": []}, [[[]]]]  # fmt: skip


def byte_mutants(data: bytes, n: int, seed: int = 0) -> Iterator[bytes]:
    """`n` corruptions of `data`: flipped bits, cut tails, dropped, repeated or inserted runs, zeros."""
    rng = random.Random(seed)
    yield b""
    for _ in range(n):
        out = bytearray(data)
        kind = rng.randrange(5)
        at = rng.randrange(len(out) + 1)
        if kind == 0:
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(out))
                out[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del out[at:]
        elif kind == 2:
            del out[at : at + rng.randint(1, 64)]
        elif kind == 3:
            out[at:at] = out[at : at + rng.randint(1, 64)]
        else:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        yield bytes(out)


def value_mutants(document: Any, n: int, seed: int = 0) -> Iterator[Any]:
    """`n` edits of a parsed YAML/JSON `document`: one node replaced by an odd value, a key dropped or
    an unknown key added, anywhere in the tree; also the odd values as whole documents."""
    rng = random.Random(seed)
    yield from ODD_VALUES
    for _ in range(n):
        mutant = copy.deepcopy(document)
        parent, key = _random_slot(mutant, rng)
        if parent is None:
            yield rng.choice(ODD_VALUES)
            continue
        kind = rng.randrange(3)
        if kind == 0 or not isinstance(parent, dict):
            parent[key] = copy.deepcopy(rng.choice(ODD_VALUES))
        elif kind == 1:
            del parent[key]
        else:
            parent[f"unknown_{rng.randrange(100)}"] = rng.choice(ODD_VALUES)
        yield mutant


def _random_slot(document: Any, rng: random.Random) -> tuple[Any, Any]:
    """A random (container, key or index) in the tree, or (None, None) for a scalar document."""
    slots = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            slots.append((node, key))
            walk(child)

    walk(document)
    return rng.choice(slots) if slots else (None, None)
