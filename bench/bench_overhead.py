"""Cost of k attached SPMs (with per-sample Facilitated Transport gammas) on a UNet forward.

Real SD 1.5 architecture with random weights (the cost is the weights' shapes, not their values),
CFG batch of 2, timed against the bare UNet. Writes reports/bench/overhead.md.

    python bench/bench_overhead.py [--device cuda] [--size 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

import spm
from spm.models import SD1_UNET_CONFIG


def sd15_unet(device: str, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**SD1_UNET_CONFIG)
    return unet.to(device, dtype).eval()


def attach_random(unet, k: int) -> spm.AttachedSPMs:
    """k random SPMs on the bare UNet at fixed gammas (the bench has no text encoder); non-zero up
    factors, as trained ones are."""
    spms = [spm.SPM.init(unet, [f"concept {i}"], seed=i) for i in range(k)]
    for s in spms:
        s.layers = {name: (down, torch.randn_like(up) * 0.01) for name, (down, up) in s.layers.items()}
    return spm.attach(unet, spms, transport=False)


@torch.no_grad()
def time_forward(unet, x, t, cond, repeats: int) -> float:
    unet(x, t, encoder_hidden_states=cond)  # warm-up
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        unet(x, t, encoder_hidden_states=cond)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--size", type=int, default=64, help="latent side (64 = 512 px)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ks", default="0,1,5,20")
    ap.add_argument("--prompts", type=int, default=1, help="prompts per batch, each with its own gamma row")
    ap.add_argument("--out", type=Path, default=None, help="default: reports/bench/overhead_<device>_p<prompts>.md")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    args.out = args.out or Path(f"reports/bench/overhead_{args.device.split(':')[0]}_p{args.prompts}.md")
    unet = sd15_unet(args.device, dtype)
    batch = 2 * args.prompts  # CFG: [uncond; cond] per prompt
    x = torch.randn(batch, 4, args.size, args.size, device=args.device, dtype=dtype)
    cond = torch.randn(batch, 77, 768, device=args.device, dtype=dtype)
    ks = [int(v) for v in args.ks.split(",")]
    times: dict[int, list[float]] = {k: [] for k in ks}
    for _ in range(args.repeats):  # rounds interleave the settings, so drift hits all of them alike
        for k in ks:
            if not k:
                times[k].append(time_forward(unet, x, 500, cond, 1))
                continue
            attached = attach_random(unet, k)
            with attached.permeable(torch.rand(args.prompts, k)):  # a row per prompt, tiled over [uncond; cond]
                times[k].append(time_forward(unet, x, 500, cond, 1))
            attached.detach()
    bare = statistics.median(times[0])
    rows = [(k, statistics.median(times[k]), min(times[k]), max(times[k])) for k in ks]
    for k, seconds, _, _ in rows:
        print(f"k={k:3d}  {seconds * 1000:9.1f} ms  (+{(seconds / bare - 1) * 100:5.1f} %)")
    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    )
    lines = [
        "# SPM inference overhead (UNet forward, SD 1.5 architecture, random weights)",
        "",
        f"Command: `python bench/bench_overhead.py --device {args.device} --dtype {args.dtype} --size {args.size} --repeats {args.repeats} --prompts {args.prompts}`",
        f"Machine: {device_name}, {torch.get_num_threads()} CPU threads; torch {torch.__version__}; "
        f"{args.prompts} prompt(s) with their own gammas, batch {batch} (CFG), "
        f"latent {args.size}x{args.size}, median of {args.repeats} interleaved rounds.",
        "",
        "| SPMs attached | forward, median (ms) | min-max (ms) | overhead vs bare |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {k} | {s * 1000:.1f} | {lo * 1000:.0f}-{hi * 1000:.0f} | {(s / bare - 1) * 100:+.1f} % |"
        for k, s, lo, hi in rows
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
