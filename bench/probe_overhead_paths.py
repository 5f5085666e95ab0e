"""Where the membranes' inference time goes, per execution path: which of spm.layers' paths to take on a GPU.

bench_pipeline_overhead.py measures the whole pipeline under spm.layers' cost model, whose constants were fitted
on a CPU. This probe times the same calls with each path forced, side by side in one run (rounds interleaved,
ratio = bare / attached per round, then the median), and profiles one UNet forward per path:

- rule: spm.layers as shipped (per-row folds where its CPU-fitted cost model says they pay);
- branch: every layer on the unfolded rank-R branch (FOLD_RATIO = FOLD_BYTES = 0);
- fold: every pointwise layer on per-row folded weights (no ratio or byte bound);
- uniform: every prompt at one permeability (FT off), so each layer folds once for the call: the floor any
  per-prompt path can reach.

    python bench/probe_overhead_paths.py --model sd15 --device cuda --dtype float16 --prompts 2,8 --ks 1,20
    python bench/probe_overhead_paths.py --model sd15-tiny --prompts 2 --ks 1 --steps 2 --rounds 1  # CPU smoke
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline_overhead import (  # noqa: E402
    UNetTimer,
    environment,
    forced_path,
    load,
    prompts_for,
    random_spms,
    timed_call,
    write_atomic,
)  # fmt: skip

import spm  # noqa: E402


# path -> (FOLD_RATIO, FOLD_BYTES); None keeps the shipped value
PATHS = {"rule": (None, None), "branch": (0.0, 0), "fold": (1e9, 2**40)}


def attached_runner(pipe, spms, path: str):
    """(runner, cleanup): a pipeline call with `spms` attached on `path`."""
    if path == "uniform":
        attached = spm.attach(pipe, spms, transport=False)
        return attached, attached.detach
    cleanup = contextlib.ExitStack()  # closed: detached, then the shipped constants back
    cleanup.enter_context(forced_path(*PATHS[path]))
    attached = spm.attach(pipe, spms)
    cleanup.callback(attached.detach)
    return attached, cleanup.close


def measure(pipe, n: int, ks: list[int], args) -> list[dict]:
    prompts = prompts_for(n)
    spms = {k: random_spms(pipe, k) for k in ks}
    timer = UNetTimer(pipe.unet)
    settings = [(0, "bare")] + [(k, p) for k in ks for p in [*PATHS, "uniform"]]
    timed_call(pipe, pipe, timer, prompts, args)  # warm-up
    times: dict = {s: [] for s in settings}
    for _ in range(args.rounds):
        for k, path in settings:
            if not k:
                times[(k, path)].append(timed_call(pipe, pipe, timer, prompts, args))
                continue
            runner, cleanup = attached_runner(pipe, spms[k], path)
            times[(k, path)].append(timed_call(runner, pipe, timer, prompts, args))
            cleanup()
    timer.remove()
    bare = times[(0, "bare")]
    return [
        {
            "prompts": n,
            "spms": k,
            "path": path,
            "seconds": statistics.median(t for t, _, _ in times[(k, path)]),
            "unet_seconds": statistics.median(u for _, u, _ in times[(k, path)]),
            "ratio": statistics.median(b[0] / a[0] for b, a in zip(bare, times[(k, path)])),
            "unet_ratio": statistics.median(b[1] / a[1] for b, a in zip(bare, times[(k, path)])),
        }
        for k, path in settings
    ]


def profile(pipe, n: int, k: int, path: str, args) -> dict:
    """Kernel launches and the top device (or CPU) ops of one UNet forward (the call's second step: planned)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    prompts = prompts_for(n)
    cap: dict = {}
    if k:
        runner, cleanup = attached_runner(pipe, random_spms(pipe, k), path)
    else:
        runner, cleanup = pipe, lambda: None
    steps = {"seen": 0}

    def hook(module, a, kw):
        steps["seen"] += 1
        if steps["seen"] == 2:
            cap["args"] = (a, kw)

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    # The pipeline call plans the layers; the profiled UNet forward reuses those plans (same permeability state).
    if k:
        gamma = runner.permeability(prompts)
        with runner.permeable(gamma):
            pipe(prompts, num_inference_steps=3, height=args.size, width=args.size, output_type="pt")
            a, kw = cap["args"]
            with torch.no_grad():
                pipe.unet(*a, **kw)
                with torch_profile(activities=activities) as prof:
                    pipe.unet(*a, **kw)
                    if cuda:
                        torch.cuda.synchronize()
    else:
        pipe(prompts, num_inference_steps=3, height=args.size, width=args.size, output_type="pt")
        a, kw = cap["args"]
        with torch.no_grad(), torch_profile(activities=activities) as prof:
            pipe.unet(*a, **kw)
            if cuda:
                torch.cuda.synchronize()
    handle.remove()
    cleanup()
    events = prof.key_averages()
    attr = "device_time_total" if cuda else "self_cpu_time_total"
    kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA] if cuda else []
    top = sorted(events, key=lambda e: getattr(e, attr, 0), reverse=True)[:12]
    return {
        "prompts": n,
        "spms": k,
        "path": path,
        "kernel_launches": sum(e.count for e in kernels),
        "device_us": sum(getattr(e, attr, 0) for e in kernels) if cuda else None,
        "cpu_us": sum(e.self_cpu_time_total for e in events),
        "top": [{"name": e.key[:70], "count": e.count, "us": getattr(e, attr, 0)} for e in top],
    }


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# Membrane execution paths at inference ({report['settings']['model']}, {report['settings']['device']}, "
        f"{report['settings']['dtype']})",
        "",
        f"Command: `{report['settings']['command']}`",
        f"Date: {env['date']}. Machine: {env['device']}, {env['threads']} torch threads. torch {env['torch']}, "
        f"diffusers {env['diffusers']}, transformers {env['transformers']}, python {env['python']}.",
        f"Settings: {report['settings']['size']} px, {report['settings']['steps']} steps, CFG 7.5, median of "
        f"{report['settings']['rounds']} interleaved rounds; ratio = bare time / attached time (1.00x = free).",
        "",
        "| prompts | SPMs | path | pipeline (s) | ratio vs bare | UNet ratio |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['prompts']} | {r['spms']} | {r['path']} | {r['seconds']:.3f} | {r['ratio']:.3f}x | "
            f"{r['unet_ratio']:.3f}x |"
        )
    lines += ["", "## One UNet forward, profiled", ""]
    for p in report["profiles"]:
        dev = f", device time {p['device_us'] / 1000:.2f} ms" if p["device_us"] is not None else ""
        lines.append(
            f"- {p['prompts']} prompts, {p['spms']} SPMs, {p['path']}: {p['kernel_launches']} kernel launches"
            f"{dev}, CPU (self, all ops) {p['cpu_us'] / 1000:.2f} ms; top ops: "
            + "; ".join(f"{t['name']} x{t['count']} {t['us'] / 1000:.2f} ms" for t in p["top"][:8])
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sd15")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prompts", default="2,8")
    ap.add_argument("--ks", default="1,20")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.size = args.size or {"sd15": 512, "sdxl": 1024}.get(args.model, 64)
    ks = [int(v) for v in args.ks.split(",")]
    pipe = load(args.model, args.device, getattr(torch, args.dtype))
    report = {
        "settings": dict(vars(args), out=None, command="python " + " ".join(sys.argv)),
        "environment": environment(args),
        "rows": [],
        "profiles": [],
    }
    out = args.out or Path(f"reports/bench/overhead_paths_{Path(args.model).name}_{args.device.split(':')[0]}")

    def save() -> None:  # after every stage: a run cut at its time limit keeps what it measured
        write_atomic(out.with_suffix(".json"), json.dumps(report, indent=1, default=str) + "\n")
        write_atomic(out.with_suffix(".md"), markdown(report))

    for n in (int(v) for v in args.prompts.split(",")):
        report["rows"] += measure(pipe, n, ks, args)
        for r in report["rows"][-len(ks) * 4 - 1 :]:
            print(f"prompts={n} k={r['spms']} {r['path']:8s} {r['seconds']:.3f} s ratio {r['ratio']:.3f}x", flush=True)
        save()
    n = int(args.prompts.split(",")[0])
    for k, path in [(0, "bare"), (ks[0], "rule"), (ks[0], "branch"), (ks[0], "fold")]:
        try:  # a profiler failure must not cost the timings already saved
            report["profiles"].append(profile(pipe, n, k, path, args))
        except Exception as e:  # noqa: BLE001
            print(f"profile {path} k={k} failed: {e!r}", flush=True)
            continue
        p = report["profiles"][-1]
        print(f"profile {path} k={k}: {p['kernel_launches']} launches, device {p['device_us']} us", flush=True)
        save()
    print(f"wrote {out}.json and .md")


if __name__ == "__main__":
    main()
