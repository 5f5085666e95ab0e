"""spmbench: a benchmark of concept erasers. `spmbench.results(run_dir)`: every number of a run as a
tidy pandas frame (spmbench.report.results); imported on first use, so that `import spmbench` stays light."""

from __future__ import annotations

from typing import Any


__all__ = ["results"]


def __getattr__(name: str) -> Any:
    if name == "results":
        from spmbench.report import results

        return results
    raise AttributeError(f"module 'spmbench' has no attribute {name!r}")
