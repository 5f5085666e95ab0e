"""Host time of one membrane layer call, per execution path, against the bare layer: the Python a planned step costs.

On a GPU the bare SD 1.5 pipeline is host-bound at small batches (reports/bench/overhead_paths_sd15_cuda.md: one
UNet forward takes 16.8 ms of device time but ~30 ms per step), so whatever Python a membrane layer adds per step
shows in the wall time, about 190 layers per UNet forward. This times a planned call on tensors so small that the
arithmetic is negligible, leaving the host cost: the bare layer, then k SPMs on each path (rounds interleaved,
medians). The difference to the bare layer times the number of membrane layers is the host time added per step.
With --against, another version of spm/layers.py (e.g. `git show REV:spm/layers.py > /tmp/layers_rev.py`) is timed
side by side in the same rounds, so a change to the layer's fast path is measured under the same load.

    python bench/bench_layer_host_time.py                       # reports/bench/layer_host_time_cpu.{json,md}
    python bench/bench_layer_host_time.py --against /tmp/layers_rev.py --label REV
    python bench/bench_layer_host_time.py --calls 500 --rounds 1 --out /tmp/quick   # a smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline_overhead import environment, forced_path, write_atomic  # noqa: E402

import spm.layers  # noqa: E402


# path -> (FOLD_RATIO, FOLD_BYTES, one permeability for the batch?); None keeps the shipped value
PATHS = {
    "rule": (None, None, False),
    "branch": (0.0, 0, False),
    "per-row fold": (1e9, 2**40, False),
    "one permeability": (None, None, True),
}


def membrane(layers, kind: str, k: int, uniform: bool) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """A bare layer, the same wrapped by `layers` (a version of spm.layers) with k rank-1 SPMs, and an input."""
    torch.manual_seed(0)
    base = nn.Linear(8, 8) if kind == "linear" else nn.Conv2d(8, 8, 1)
    state = layers.PermeabilityState()
    layer = layers.MembraneLayer(base, state)
    for _ in range(k):
        shapes = ((1, 8), (8, 1)) if kind == "linear" else ((1, 8, 1, 1), (8, 1, 1, 1))
        layer.add_branch(torch.randn(shapes[0]), torch.randn(shapes[1]), 1.0)
    state.gamma = torch.full((2, k), 0.5) if uniform else torch.rand(2, k, generator=torch.Generator().manual_seed(1))
    x = torch.randn(4, 3, 8) if kind == "linear" else torch.randn(4, 8, 2, 2)
    return base, layer, x


def per_call_us(module: nn.Module, x: torch.Tensor, calls: int) -> float:
    with torch.no_grad():
        for _ in range(50):  # the first call plans the layer
            module(x)
        start = time.perf_counter()
        for _ in range(calls):
            module(x)
    return (time.perf_counter() - start) / calls * 1e6


def measure(versions: dict, kind: str, k: int, args) -> list[dict]:
    """Per path, the median host time of a planned call of each version and of the bare layer, rounds interleaved."""
    rows = []
    for path, (ratio, nbytes, uniform) in PATHS.items():
        times: dict[str, list[float]] = {"bare": [], **{v: [] for v in versions}}
        for _ in range(args.rounds):
            for label, layers in versions.items():
                with forced_path(ratio, nbytes, layers):
                    base, layer, x = membrane(layers, kind, k, uniform)
                    times["bare"].append(per_call_us(base, x, args.calls))
                    times[label].append(per_call_us(layer, x, args.calls))
        bare = statistics.median(times["bare"])
        for label in versions:
            us = statistics.median(times[label])
            rows.append({"layer": kind, "spms": k, "path": path, "version": label, "us": us, "bare_us": bare,
                         "added_us": us - bare})  # fmt: skip
    return rows


def load_layers(path: Path):
    """Another version of spm/layers.py as a module of its own (it imports torch and diffusers only)."""
    spec = importlib.util.spec_from_file_location(f"layers_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markdown(report: dict) -> str:
    env, s = report["environment"], report["settings"]
    lines = [
        "# Host time of one membrane layer call, per path",
        "",
        f"Command: `{s['command']}`",
        f"Date: {env['date']}. Machine: {env['device']}, {env['threads']} torch threads, load average at start "
        f"{env['load_average_at_start']}. torch {env['torch']}, python {env['python']}.",
        f"Settings: a planned call (after 50 warm-up calls) on a batch of 4 rows of 3 tokens x 8 channels (Linear 8 -> 8)"
        f" or 4 x 8 x 2 x 2 (1x1 conv), so the arithmetic is negligible; {s['calls']} calls per timing, median of "
        f"{s['rounds']} interleaved rounds; each prompt its own permeability except 'one permeability'. "
        "Versions: this checkout's spm.layers"
        + (f", and {s['label']} ({s['against']}), side by side in the same rounds." if s["against"] else "."),
        "",
        "| layer | SPMs | path | version | us per call | bare layer (us) | added (us) |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['layer']} | {r['spms']} | {r['path']} | {r['version']} | {r['us']:.1f} | {r['bare_us']:.1f} | "
            f"{r['added_us']:+.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", default="1,20")
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--against", type=Path, default=None, help="another spm/layers.py, timed side by side")
    ap.add_argument("--label", default="other", help="the name of --against's version in the report")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/layer_host_time_cpu"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.device = "cpu"
    versions = {"this checkout": spm.layers}
    if args.against:
        versions[args.label] = load_layers(args.against)
    rows = []
    for kind in ("linear", "conv"):
        for k in map(int, args.ks.split(",")):
            rows += measure(versions, kind, k, args)
            for r in rows[-len(PATHS) * len(versions) :]:
                print(
                    f"{kind:6s} k={k:2d} {r['path']:16s} {r['version']:14s} {r['us']:6.1f} us ({r['added_us']:+.1f})"
                )
    report = {
        "settings": dict(vars(args), out=None, command="python " + " ".join(sys.argv)),
        "environment": environment(args),
        "rows": rows,
    }
    write_atomic(args.out.with_suffix(".json"), json.dumps(report, indent=1, default=str) + "\n")
    write_atomic(args.out.with_suffix(".md"), markdown(report))
    print(f"wrote {args.out}.json and .md")


if __name__ == "__main__":
    main()
