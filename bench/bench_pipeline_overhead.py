"""Whole-pipeline cost of k attached SPMs with Facilitated Transport, each prompt its own permeability.

Times `attached(prompts, ...)` against the bare `pipe(prompts, ...)` at the same batch, steps and seeds,
side by side in one run: each round runs every setting once (bare, then k = 1, 5, 20, ...), so load
drift hits all of them alike, and the ratio bare / attached is taken per round, then the median.
Also the UNet forward time (summed over the steps of a call) and the arithmetic limit: the pipeline's
multiply-adds against those plus the k rank-1 branches' (in + out) x k per token per membrane layer,
the cost the unfolded branches would add.

    # the toy model on CPU (issue 21's setting)
    python bench/bench_pipeline_overhead.py --threads 2 --prompts 32 --steps 30 --rounds 3
    # SD 1.5 architecture, random weights, on a GPU (both batch sizes in one call)
    python bench/bench_pipeline_overhead.py --model sd15 --device cuda --dtype float16 --size 512 --prompts 2,8
    # the same code path on CPU at a tiny size (a smoke test before any GPU session)
    python bench/bench_pipeline_overhead.py --model sd15-tiny --size 64 --prompts 2 --steps 2 --rounds 1
    # SDXL architecture, random weights, 1024 px (issue 23), 1 and 20 SPMs; and its tiny CPU smoke equivalent
    python bench/bench_pipeline_overhead.py --model sdxl --device cuda --dtype float16 --prompts 2 --ks 1,20 --steps 20
    python bench/bench_pipeline_overhead.py --model sdxl-tiny --prompts 2 --ks 1,20 --steps 2 --rounds 1
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import spm
from spm.adapter import layer_names
from spm.layers import membrane_targets
from spm.models import SD1_UNET_CONFIG, SDXL_UNET_CONFIG


# From the repository, wherever the script runs from (the other scripts of bench/ import this one).
TOY = str(Path(__file__).resolve().parents[1] / "spmbench" / "toy" / "weights" / "toy-base")
# Its tokenizer files give the random SD 1.5 pipeline a real CLIP tokenizer without any download.
TOKENIZER = Path(TOY) / "tokenizer"
PHRASES = ["a photo of", "a painting of", "a sketch of", "an image of", "a drawing of", "a picture of"]
THINGS = ["a dog", "a cat", "a tree", "a house", "a car", "a boat", "a bird", "the sea", "a lamp", "a chair"]
# Words the prompts do not contain, so FT's cosine (not a shared token) sets each prompt's own permeability.
TARGETS = ["zebra", "castle", "volcano", "guitar", "penguin", "rocket", "violin", "tiger", "bridge", "candle"]


def random_sd15(tiny: bool, device: str, dtype: torch.dtype):
    """A StableDiffusionPipeline with SD 1.5's architecture (or a tiny one) and random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER, model_max_length=77)
    width = 32 if tiny else 768
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
            num_hidden_layers=2 if tiny else 12, num_attention_heads=2 if tiny else 12, max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )  # fmt: skip
    unet_config = dict(SD1_UNET_CONFIG, cross_attention_dim=width)
    vae_config: dict = dict(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
    )  # fmt: skip
    if tiny:
        unet_config.update(block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=16)
        vae_config.update(block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=8)
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**unet_config), vae=AutoencoderKL(**vae_config), text_encoder=text_encoder,
        tokenizer=tokenizer, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    return pipe.to(device, dtype)


def _clip_config(tokenizer, width: int, layers: int, heads: int, projection: int = 768, act: str = "quick_gelu"):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, projection_dim=projection, hidden_act=act,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip


def random_sdxl(tiny: bool, device: str, dtype: torch.dtype):
    """A StableDiffusionXLPipeline with SDXL base's architecture (or a tiny one of the same layout) and random
    weights: its UNet (spm.models.SDXL_UNET_CONFIG), CLIP ViT-L and OpenCLIP bigG text encoders (penultimate
    states concatenated, 768 + 1280 = 2048; bigG's projection is the pooled embedding), SDXL's VAE and Euler
    scheduler. Built on `device` directly: 3.5 G parameters initialise in seconds on a GPU, minutes on a CPU."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER, model_max_length=77)
    tokenizer_2 = CLIPTokenizer.from_pretrained(TOKENIZER, model_max_length=77, pad_token="!")
    widths = (32, 48) if tiny else (768, 1280)
    pooled = 32 if tiny else 1280
    encoder_1 = _clip_config(tokenizer, widths[0], 2 if tiny else 12, 2 if tiny else 12)
    encoder_2 = _clip_config(tokenizer_2, widths[1], 2 if tiny else 32, 2 if tiny else 20, pooled, "gelu")
    unet_config = dict(SDXL_UNET_CONFIG, cross_attention_dim=sum(widths))
    vae_config: dict = dict(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=1024,
        scaling_factor=0.13025, force_upcast=False,
    )  # fmt: skip
    if tiny:
        unet_config.update(
            sample_size=8, block_out_channels=(32, 64, 64), layers_per_block=1, transformer_layers_per_block=(1, 1, 2),
            attention_head_dim=(2, 4, 4), norm_num_groups=16, addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + pooled,
        )  # fmt: skip
        vae_config.update(block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=8)
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, timestep_spacing="leading"
    )
    with torch.device(device):
        pipe = StableDiffusionXLPipeline(
            unet=UNet2DConditionModel(**unet_config), vae=AutoencoderKL(**vae_config),
            text_encoder=CLIPTextModel(encoder_1), text_encoder_2=CLIPTextModelWithProjection(encoder_2),
            tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=scheduler,
        )  # fmt: skip
    return pipe.to(device, dtype)


def load(model: str, device: str, dtype: torch.dtype):
    if model in ("sd15", "sd15-tiny"):
        pipe = random_sd15(model == "sd15-tiny", device, dtype)
    elif model in ("sdxl", "sdxl-tiny"):
        pipe = random_sdxl(model == "sdxl-tiny", device, dtype)
    else:
        pipe = spm.load_pipeline(TOY if model == "toy" else model, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_spms(pipe, k: int) -> list[spm.SPM]:
    """k SPMs with non-zero up factors (as trained ones are), each erasing one of TARGETS."""
    spms = [spm.SPM.init(pipe.unet, [TARGETS[i % len(TARGETS)]], seed=i) for i in range(k)]
    for s in spms:
        s.layers = {name: (down, torch.randn_like(up) * 0.01) for name, (down, up) in s.layers.items()}
    return spms


def prompts_for(n: int) -> list[str]:
    return [f"{PHRASES[i % len(PHRASES)]} {THINGS[(i // len(PHRASES)) % len(THINGS)]}, number {i}" for i in range(n)]


class UNetTimer:
    """Sums the UNet forward time of a pipeline call, without a host sync inside the call (CUDA events)."""

    def __init__(self, unet):
        self.cuda = next(unet.parameters()).is_cuda
        self.spans: list = []
        self.handles = [
            unet.register_forward_pre_hook(lambda *_: self._mark()),
            unet.register_forward_hook(lambda *_: self._mark()),
        ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.spans.append(event)
        else:
            self.spans.append(time.perf_counter())

    def take(self) -> float:
        """Seconds spent in UNet forwards since the last take()."""
        pairs = list(zip(self.spans[::2], self.spans[1::2]))
        self.spans = []
        if self.cuda:
            return sum(a.elapsed_time(b) for a, b in pairs) / 1000
        return sum(b - a for a, b in pairs)


def timed_call(runner, pipe, timer: UNetTimer, prompts: list[str], args) -> tuple[float, float, float]:
    """Wall seconds of the call, of its UNet forwards, and the process's CPU seconds (on a loaded machine
    CPU time counts only this process's work, though threads waiting at barriers still add to it)."""
    generator = [torch.Generator("cpu").manual_seed(i) for i in range(len(prompts))]
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    runner(
        prompts, num_inference_steps=args.steps, generator=generator, height=args.size, width=args.size,
        guidance_scale=7.5, output_type="pt",
    )  # fmt: skip
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, timer.take(), time.process_time() - cpu


def macs(pipe, prompts: list[str], args, ks: list[int]) -> dict:
    """Multiply-adds of one bare pipeline call, and what k unfolded rank-1 branches per layer would add."""
    from torch.utils.flop_counter import FlopCounterMode

    tokens: dict[str, int] = {}  # per batch row, by membrane layer, over one UNet forward

    def count(name):
        def hook(module, inputs, _):
            x = inputs[0]
            per_row = x[0, 0].numel() if isinstance(module, torch.nn.Conv2d) else x[0].numel() // x.shape[-1]
            tokens[name] = tokens.get(name, 0) + per_row * x.shape[0]

        return hook

    layers = membrane_targets(pipe.unet)
    handles = [layer.register_forward_hook(count(name)) for name, layer in layers.items()]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        pipe(prompts, num_inference_steps=args.steps, height=args.size, width=args.size, output_type="pt")
    for h in handles:
        h.remove()
    total = counter.get_total_flops() / 2
    own = sum(n * _width(layers[name])[0] * _width(layers[name])[1] for name, n in tokens.items())
    per_spm = sum(n * sum(_width(layers[name])) for name, n in tokens.items())
    return {
        "pipeline_macs": total,
        "membrane_layers_macs": own,
        "branch_macs_per_spm": per_spm,
        "limit": {k: total / (total + k * per_spm) for k in ks if k},
        "limit_layers_only": {k: own / (own + k * per_spm) for k in ks if k},
    }


def _width(layer) -> tuple[int, int]:
    base = getattr(layer, "base_layer", layer)
    if isinstance(base, torch.nn.Conv2d):
        return base.in_channels * base.kernel_size[0] * base.kernel_size[1], base.out_channels
    return base.in_features, base.out_features


def measure(pipe, n_prompts: int, ks: list[int], args) -> dict:
    prompts = prompts_for(n_prompts)
    spms = {k: random_spms(pipe, k) for k in ks if k}
    timer = UNetTimer(pipe.unet)
    distinct = {}
    for k in spms:  # attach once to check every prompt gets its own permeability
        attached = spm.attach(pipe, spms[k])
        distinct[k] = len(torch.unique(attached.permeability(prompts), dim=0))
        attached.detach()
    timed_call(pipe, pipe, timer, prompts, args)  # warm-up, bare
    times: dict[int, list[tuple[float, float, float]]] = {k: [] for k in ks}
    for _ in range(args.rounds):
        for k in ks:
            if not k:
                times[k].append(timed_call(pipe, pipe, timer, prompts, args))
                continue
            attached = spm.attach(pipe, spms[k])
            times[k].append(timed_call(attached, pipe, timer, prompts, args))
            attached.detach()
    timer.remove()
    rows = []
    for k in ks:
        ratios = [b[0] / a[0] for b, a in zip(times[0], times[k])]
        unet_ratios = [b[1] / a[1] for b, a in zip(times[0], times[k])]
        cpu_ratios = [b[2] / a[2] for b, a in zip(times[0], times[k])]
        seconds = statistics.median(t for t, _, _ in times[k])
        rows.append(
            {
                "spms": k,
                "seconds": seconds,
                "images_per_s": n_prompts / seconds,
                "unet_seconds": statistics.median(u for _, u, _ in times[k]),
                "cpu_seconds": statistics.median(c for _, _, c in times[k]),
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "unet_ratio": statistics.median(unet_ratios),
                "cpu_ratio": statistics.median(cpu_ratios),
                "distinct_permeabilities": distinct.get(k, 0),
            }
        )
    result = {"prompts": n_prompts, "batch_rows": 2 * n_prompts, "rows": rows}
    if not args.no_limit:
        result["arithmetic"] = macs(pipe, prompts, args, ks)
    return result


@contextlib.contextmanager
def forced_path(ratio: float | None, nbytes: int | None, layers=None):
    """spm.layers' fold constants (FOLD_RATIO, FOLD_BYTES) set for the block, restored after; None keeps the shipped
    value. (0, 0): every layer on the branch; (1e9, a large byte bound): every pointwise layer folded per row.
    `layers`: another version of spm.layers (default: this checkout's)."""
    import spm.layers

    layers = layers or spm.layers
    saved = layers.FOLD_RATIO, layers.FOLD_BYTES
    layers.FOLD_RATIO = saved[0] if ratio is None else ratio
    layers.FOLD_BYTES = saved[1] if nbytes is None else nbytes
    try:
        yield
    finally:
        layers.FOLD_RATIO, layers.FOLD_BYTES = saved


def layer_costs(pipe, n_prompts: int, ks: list[int], repeats: int) -> list[dict]:
    """Per membrane layer shape, the CPU time of one UNet forward's layers (summed over the layers of that shape):
    bare, on per-row folded weights, on the branch, and what spm.layers' cost model picks; each the fastest of
    `repeats` forwards per round, rounds interleaved. Thread CPU time: on a shared machine it counts this
    thread's work only. What spm.layers.FOLD_RATIO and BRANCH_MAC_COST were fitted to."""
    import collections

    prompts = prompts_for(n_prompts)
    cap: dict = {}
    hook = pipe.unet.register_forward_pre_hook(lambda m, a, kw: cap.setdefault("in", (a, kw)), with_kwargs=True)
    pipe(prompts, num_inference_steps=1, height=32, width=32, output_type="pt")
    hook.remove()
    args, kwargs = cap["in"]
    best: dict = collections.defaultdict(lambda: float("inf"))
    shapes: dict = {}

    def timed_forward(layers: dict, tag) -> None:
        start: dict = {}
        handles = []
        for name, layer in layers.items():
            handles.append(
                layer.register_forward_pre_hook(lambda m, a, n=name: start.__setitem__(n, time.thread_time()))
            )
            handles.append(layer.register_forward_hook(lambda m, a, o, n=name: spent(n, a[0], o, m, tag, start)))
        with torch.no_grad():
            for _ in range(repeats + 1):  # the first plans the call (folds): not timed as a step
                pipe.unet(*args, **kwargs)
        for h in handles:
            h.remove()

    def spent(name, x, out, module, tag, start) -> None:
        base = getattr(module, "base_layer", module).weight
        shapes[name] = (base.shape[0], base[0].numel(), x[0].numel() // base[0].numel())
        best[(tag, name)] = min(best[(tag, name)], time.thread_time() - start[name])

    paths = {"fold": (1e9, None), "branch": (0.0, 0), "rule": (None, None)}  # per-row folds within FOLD_BYTES
    spms = {k: random_spms(pipe, k) for k in ks if k}
    for _ in range(2):
        timed_forward(membrane_targets(pipe.unet), "bare")
        for k, group in spms.items():
            attached = spm.attach(pipe, group)
            gamma = attached.permeability(prompts)
            for path, (ratio, nbytes) in paths.items():
                with forced_path(ratio, nbytes), attached.permeable(gamma.clone()):
                    timed_forward({n: attached.unet.get_submodule(p) for n, p in attached.paths.items()}, (k, path))
            attached.detach()
    kohya = {path: name for name, path in layer_names(pipe.unet).items()}
    table: dict = collections.defaultdict(lambda: collections.defaultdict(float))
    for path in membrane_targets(pipe.unet):
        row = table[
            (path.rsplit(".", 1)[-1] if "proj_" in path else path.split("transformer_blocks.0.")[-1], *shapes[path])
        ]
        row["layers"] += 1
        row["bare"] += best[("bare", path)] * 1e6
        for k in spms:
            for p in paths:
                row[f"k{k}_{p}"] += best[((k, p), kohya[path])] * 1e6
    return [{"layer": key[0], "out": key[1], "in": key[2], "tokens": key[3], **row} for key, row in table.items()]


# glibc's mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
DEFAULT_ALLOCATOR = "the C library's default, or what allocator_environment sets"
ALLOCATOR_VARIABLES = ("LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_CONF")


def allocator_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--adaptive-malloc",
        action="store_true",
        help="leave glibc's adaptive mmap and trim thresholds on (default: fixed, see steady_heap)",
    )


def steady_heap(args) -> str:
    """Fix glibc malloc's thresholds for the whole process (every side of a ratio alike), unless --adaptive-malloc;
    returns the allocator policy in effect, for `environment`.

    Left adaptive, the heap's state after earlier work decides whether a process settles (no page faults per
    denoising step) or keeps trimming and regrowing it: measured on the toy, about 6,000 minor page faults per
    step and 0.45 s of system time in a 4 s call, in some processes bare and in others attached, so the ratio
    measured which side was unlucky (0.81-0.97x at k = 1 across processes). With the mmap threshold at 1 GiB and
    trimming off, both sides settle after their first call."""
    if getattr(args, "adaptive_malloc", False):
        return DEFAULT_ALLOCATOR
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: its allocator is left as it is, and the report says so
        return DEFAULT_ALLOCATOR
    if libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1):
        # glibc accepts these even when LD_PRELOAD puts another malloc in front (recorded in the environment)
        return "glibc malloc, mmap threshold 1 GiB, heap never trimmed (steady_heap)"
    return DEFAULT_ALLOCATOR


def environment(args, allocator: str = DEFAULT_ALLOCATOR) -> dict:
    """The machine, versions and load a measurement ran under; `allocator`: what steady_heap returned."""
    import diffusers
    import transformers

    if args.device.startswith("cuda"):
        device = torch.cuda.get_device_name()
    else:
        device = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    load_avg = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "threads": torch.get_num_threads(),
        "load_average_at_start": load_avg,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "allocator": allocator,
        # what the environment chose before steady_heap (or instead of it, with --adaptive-malloc)
        "allocator_environment": {k: os.environ[k] for k in ALLOCATOR_VARIABLES if k in os.environ},
    }


def markdown(report: dict) -> str:
    s, env = report["settings"], report["environment"]
    lines = [
        f"# SPM inference overhead: whole pipeline ({s['model']}, {s['device']}, {s['dtype']})",
        "",
        f"Command: `{s['command']}`",
        f"Date: {env['date']}. Machine: {env['device']}, {env['threads']} torch threads, load average at start "
        f"{env['load_average_at_start']}, at end {env.get('load_average_at_end')}. torch {env['torch']}, diffusers {env['diffusers']}, "
        f"transformers {env['transformers']}.",
        f"Settings: {s['size']} px, {s['steps']} steps, CFG 7.5, FT on (each prompt its own permeability), "
        f"median of {s['rounds']} interleaved rounds (bare, then each k, per round); ratio = bare time / attached "
        "time per round, then the median (1.00x = free).",
        "",
    ]
    for run in report["runs"]:
        arith = run.get("arithmetic")
        lines += [
            f"## {run['prompts']} prompts (batch of {run['batch_rows']} rows with CFG)",
            "",
            "| SPMs | distinct gammas | pipeline (s) | images/s | UNet (s) | ratio vs bare (min-max) | UNet ratio"
            " | CPU-time ratio |" + (" arithmetic limit |" if arith else ""),
            "|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if arith else ""),
        ]
        for r in run["rows"]:
            limit = arith["limit"].get(r["spms"]) if arith else None
            cell = "" if not arith else (f" {limit:.3f}x |" if limit else " 1x |")
            lines.append(
                f"| {r['spms']} | {r['distinct_permeabilities'] or '-'} | {r['seconds']:.2f} | {r['images_per_s']:.2f}"
                f" | {r['unet_seconds']:.2f} | {r['ratio']:.3f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
                f" | {r['unet_ratio']:.3f}x | {r['cpu_ratio']:.3f}x |{cell}"
            )
        if arith:
            lines += [
                "",
                f"Arithmetic: the bare pipeline call is {arith['pipeline_macs'] / 1e9:.2f} G multiply-adds, its "
                f"membrane layers {arith['membrane_layers_macs'] / 1e9:.2f} G; each SPM's unfolded rank-1 branches "
                f"would add {arith['branch_macs_per_spm'] / 1e9:.3f} G ((in + out) per token per layer). Limit = "
                "pipeline / (pipeline + k x branches); on the membrane layers alone it would be "
                + ", ".join(f"{v:.3f}x (k = {k})" for k, v in arith["limit_layers_only"].items())
                + ". Folded weights do not pay the per-token branch cost, so they can beat this limit.",
            ]
        lines.append("")
    if report.get("layers"):
        ks = sorted({int(key[1:].split("_")[0]) for key in report["layers"][0] if key.startswith("k")})
        lines += [
            "## Membrane layers by shape (one UNet forward, us of thread CPU time, fastest of 3 per round)",
            "",
            "Summed over the layers of each shape; fold = per-row folded weights, branch = the rank-k branch, "
            "rule = what spm.layers' cost model picks (FOLD_RATIO, BRANCH_MAC_COST).",
            "",
            "| layer | out | in | tokens | layers | bare | "
            + " | ".join(f"k={k} fold | k={k} branch | k={k} rule" for k in ks)
            + " |",
            "|---|---:|---:|---:|---:|---:|" + "---:|" * 3 * len(ks),
        ]
        totals = {key: 0.0 for key in report["layers"][0] if key not in ("layer", "out", "in", "tokens", "layers")}
        for r in report["layers"]:
            cells = " | ".join(f"{r[f'k{k}_fold']:.0f} | {r[f'k{k}_branch']:.0f} | {r[f'k{k}_rule']:.0f}" for k in ks)
            lines.append(
                f"| {r['layer']} | {r['out']} | {r['in']} | {r['tokens']} | {r['layers']:.0f} | {r['bare']:.0f} | {cells} |"
            )
            for key in totals:
                totals[key] += r[key]
        cells = " | ".join(
            f"{totals[f'k{k}_fold']:.0f} | {totals[f'k{k}_branch']:.0f} | {totals[f'k{k}_rule']:.0f}" for k in ks
        )
        lines += [f"| all | | | | | {totals['bare']:.0f} | {cells} |", ""]
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="toy",
        help="toy, sd15 or sdxl (random weights), sd15-tiny, sdxl-tiny, or a pipeline directory",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--size", type=int, default=None, help="image side in px (default: toy 32, sd15 512)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--prompts", default="32", help="comma-separated batch sizes (prompts; CFG doubles the rows)")
    ap.add_argument("--ks", default="0,1,5,20", help="numbers of SPMs; 0 (the bare pipeline) is always run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (set it: the default varies)")
    ap.add_argument("--no-limit", action="store_true", help="skip counting the arithmetic limit")
    ap.add_argument(
        "--layers",
        action="store_true",
        help="also time each membrane layer shape bare, folded per row and on the branch",
    )
    ap.add_argument("--out", type=Path, default=None, help="default: reports/bench/pipeline_overhead_<model>_<device>")
    allocator_option(ap)
    args = ap.parse_args()
    allocator = steady_heap(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    default_sizes = {"sd15": 512, "sdxl": 1024, "sd15-tiny": 64, "sdxl-tiny": 64}
    args.size = args.size or default_sizes.get(args.model, 32)
    ks = sorted({0, *(int(v) for v in args.ks.split(","))})
    pipe = load(args.model, args.device, getattr(torch, args.dtype))
    runs = []
    for n in (int(v) for v in args.prompts.split(",")):
        runs.append(measure(pipe, n, ks, args))
        for r in runs[-1]["rows"]:
            print(f"prompts={n:3d} k={r['spms']:3d} {r['seconds']:8.2f} s  ratio {r['ratio']:.3f}x", flush=True)
    report = {
        "settings": dict(vars(args), out=None, command="python " + " ".join(__import__("sys").argv)),
        "environment": environment(args, allocator),
        "runs": runs,
    }
    if args.layers:
        report["layers"] = layer_costs(pipe, int(args.prompts.split(",")[-1]), [k for k in ks if k in (1, 20)], 3)
    report["environment"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    out = args.out or Path(f"reports/bench/pipeline_overhead_{Path(args.model).name}_{args.device.split(':')[0]}")
    write_atomic(out.with_suffix(".json"), json.dumps(report, indent=1, default=str) + "\n")
    write_atomic(out.with_suffix(".md"), markdown(report))
    print(f"wrote {out}.json and .md")


if __name__ == "__main__":
    main()
