"""One run over several processes: which process does what, by index, when a launcher started it.

`accelerate launch` (or torchrun, which it runs for multi-GPU and multi-node jobs) starts one process
per device and sets RANK, WORLD_SIZE and LOCAL_RANK in each. spmbench reads those and needs no process
group: the processes share the run folder, whose files say what is done and whose locks say what is
being done (spmbench.locks). So a process that dies, or a relaunch with another process count, only
changes who computes what is still missing, never what is computed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar


T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place among the `world_size` processes of one launch (rank 0 of 1: no launcher)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Shard:
        """The shard a launcher gave this process (RANK, WORLD_SIZE); rank 0 of 1 without one."""
        if "WORLD_SIZE" not in environ and "RANK" not in environ:
            return cls()
        try:
            rank, world_size = int(environ.get("RANK", "0")), int(environ.get("WORLD_SIZE", "1"))
        except ValueError:
            raise ValueError(
                f"RANK={environ.get('RANK')!r} and WORLD_SIZE={environ.get('WORLD_SIZE')!r} are not whole numbers: "
                "start the processes with `accelerate launch` (or torchrun), which sets them, or unset them"
            ) from None
        if not 0 <= rank < world_size:
            raise ValueError(
                f"RANK={rank} is not among WORLD_SIZE={world_size} processes: start the processes with "
                "`accelerate launch` (or torchrun), which sets them, or unset them"
            )
        return cls(rank, world_size)

    @property
    def leads(self) -> bool:
        """The process that writes the reports (all others only compute)."""
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Whether the item at `index` of a list every process builds alike is this process's."""
        return index % self.world_size == self.rank

    def in_order(self, items: Sequence[T]) -> list[T]:
        """Every item, in the order this process takes them: its own first (every world_size-th, from
        its rank), then the others' from the last back, so that it takes over work its owner has not
        reached (or never will: a dead process) while meeting that owner as late as possible."""
        mine = [item for i, item in enumerate(items) if self.owns(i)]
        others = [item for i, item in enumerate(items) if not self.owns(i)]
        return mine + others[::-1]


def device_for(device: str, environ: Mapping[str, str] = os.environ) -> str:
    """A bare 'cuda' under a launcher means this process's GPU, cuda:LOCAL_RANK (as accelerate's
    PartialState picks it); a device with an index, or any other, is taken as given."""
    local_rank = environ.get("LOCAL_RANK")
    if device == "cuda" and local_rank is not None and local_rank.isdigit():
        return f"cuda:{local_rank}"
    return device
