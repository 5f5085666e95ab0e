"""Seconds per training iteration: `spm.train` against the reference loop, side by side in one run.

The reference loop (`reference_train`) is the training loop of spm-method.md section 4 written the
straightforward way, as the released code runs it: batch 1, one UNet call per prediction (CFG's two
branches of each rollout step are two calls; the frozen target, the frozen neutral and each anchor are a
call each, and so is each membrane-on prediction), the rollout step by step, fp32, no garbage collection
(a cost that is not the algorithm's). It trains the same membrane layers `spm.train` trains (spm.SPM.init
and spm.attach), with the same random draws in the same order (target, size, rollout depth k, noise,
anchors), so at one seed both loops do the same work on the same latents: only the loop differs.

Each round runs a few iterations of each loop at a fresh seed (the same for both), so load drift hits both
alike; the ratio is ours / reference over the round's iterations, then the median over rounds. UNet calls
and sample-forwards (rows) per iteration are counted by a hook on the UNet.

    # the toy world on CPU
    python bench/bench_training.py --model toy --threads 2 --iterations 4 --rounds 3
    # SD 1.5 / SDXL architecture (random weights) on a GPU, fp32 as the reference
    python bench/bench_training.py --model sd15 --device cuda --iterations 4 --rounds 3 --also-bf16
    python bench/bench_training.py --model sdxl --device cuda --iterations 2 --rounds 2
    # the same code paths on CPU at a tiny size (smoke test)
    python bench/bench_training.py --model sd15-tiny --iterations 2 --rounds 1 --rollout-steps 4 --resolutions 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F

import spm
from spm.encoding import Conditioning, encode, is_sd3, unconditional
from spm.train import (
    TrainConfig,
    _draw_size,
    _random_anchors,
    _rollout_schedule,
    anchor_vocabulary,
    sample_vocabulary_prompts,
)


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline_overhead import TOY, environment, random_sd15, random_sdxl, write_atomic  # noqa: E402


def reference_train(
    pipe,
    targets: list[str],
    config: TrainConfig = TrainConfig(),
    iterations: int | None = None,
    surrogate: str = "",
    on_step=None,
) -> spm.SPM:
    """Train an SPM with the reference loop (spec section 4, one UNet call per prediction, fp32).

    Args:
        pipe: a float32 SD 1.x/2.x or SDXL pipeline (SD3 has its own objective: not here).
        targets: the concepts to erase (one drawn per iteration).
        config: the settings `spm.train` takes; `dtype` must be float32 (the reference is fp32).
        iterations: optimisation steps (default: config.iterations); the learning-rate schedule spans
            config.iterations, as spm.train's does.
        surrogate: the concept to replace the targets with, or "" (erase).
        on_step: called after every step with (step, {"erase": ..., "anchor": ...}).

    Returns:
        The trained SPM (the same layers and file format as spm.train's), for evaluation beside it.
    """
    from diffusers.optimization import get_cosine_with_hard_restarts_schedule_with_warmup

    cfg = config
    iterations = cfg.iterations if iterations is None else iterations
    if is_sd3(pipe) or getattr(pipe, "unet", None) is None:
        raise ValueError("the reference loop is for UNet pipelines (SD 1.x/2.x, SDXL): SD3 trains with spm.train")
    if cfg.dtype != "float32" or pipe.unet.dtype != torch.float32:
        raise ValueError("the reference loop runs in fp32: give a float32 pipeline and TrainConfig(dtype='float32')")
    unet, device = pipe.unet, pipe.unet.device
    unet.requires_grad_(False)
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).requires_grad_(False)
    attached = spm.attach(pipe, spm.SPM.init(unet, targets, cfg.rank, cfg.alpha, cfg.seed), transport=False)
    try:
        params = [p for layer in attached.layers.values() for p in (layer.down[0], layer.up[0])]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = get_cosine_with_hard_restarts_schedule_with_warmup(opt, cfg.warmup_steps, cfg.iterations, cfg.restarts)
        gen = torch.Generator().manual_seed(cfg.seed)
        ddim, query_timestep = _rollout_schedule(pipe, cfg)
        c_targets = encode(pipe, list(targets))[0]
        c_empty = unconditional(pipe)
        c_neu = encode(pipe, [surrogate])[0] if surrogate else c_empty
        vocabulary = anchor_vocabulary(pipe.tokenizer, list(targets)) if cfg.vocabulary_anchors else []
        resolutions = cfg.resolved_resolutions(pipe)
        membrane_on, membrane_off = torch.ones(1, 1), torch.zeros(1, 1)

        def eps(x, t, cond: Conditioning, gamma: torch.Tensor) -> torch.Tensor:
            """One UNet call on one latent and one conditioning."""
            pixels = (x.shape[2] * pipe.vae_scale_factor, x.shape[3] * pipe.vae_scale_factor)
            with attached.permeable(gamma):
                return unet(x, t, **cond.unet_kwargs(*pixels)).sample

        for step in range(iterations):
            # 1. A target, a size, the rollout depth k, and x_t: k DDIM steps of eps' with CFG on c_tar.
            c_tar = c_targets[int(torch.randint(len(targets), (), generator=gen))][None]
            height, width = _draw_size(resolutions, gen, pipe.vae_scale_factor)
            k = int(torch.randint(1, cfg.rollout_steps, (), generator=gen))
            x = (
                torch.randn(1, unet.config.in_channels, height, width, generator=gen).to(device)
                * ddim.init_noise_sigma
            )
            with torch.no_grad():
                for t in ddim.timesteps[:k]:
                    uncond = eps(x, t, c_empty, membrane_on)
                    cond = eps(x, t, c_tar, membrane_on)
                    x = ddim.step(uncond + cfg.rollout_guidance * (cond - uncond), t, x).prev_sample
            t = query_timestep(k)
            # 2-3. The anchors: random directions, the empty prompt, and vocabulary prompts if asked for.
            randoms, empties = (2, 2) if cfg.legacy_anchors else (cfg.num_anchors, 1)
            parts = [_random_anchors(c_tar, randoms, cfg.anchor_scale, gen), c_empty.expand(empties)]
            if vocabulary:
                parts.append(encode(pipe, sample_vocabulary_prompts(vocabulary, cfg.vocabulary_anchors, gen))[0])
            anchors = Conditioning.cat(parts)
            # Frozen predictions (membrane closed), one call each.
            with torch.no_grad():
                e_neu = eps(x, t, c_neu, membrane_off)
                e_tar = eps(x, t, c_tar, membrane_off)
                e_anchors = [eps(x, t, anchors[i : i + 1], membrane_off) for i in range(len(anchors))]
            # Membrane-on predictions with grad, one call each.
            loss_erase = F.mse_loss(eps(x, t, c_tar, membrane_on), e_neu - cfg.eta * (e_tar - e_neu))
            loss_anchor = torch.stack(
                [F.mse_loss(eps(x, t, anchors[i : i + 1], membrane_on), e) for i, e in enumerate(e_anchors)]
            ).mean()
            # 4. L = L_erase + lambda * L_anchor.
            loss = loss_erase + cfg.anchor_weight * loss_anchor
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            logs = {"erase": loss_erase.item(), "anchor": loss_anchor.item()}  # logged every step, as released
            if on_step:
                on_step(step, logs)
        layers = {
            name: (layer.down[0].detach().cpu().clone(), layer.up[0].detach().cpu().clone())
            for name, layer in attached.layers.items()
        }
    finally:
        attached.detach()
    provenance = {"base_model": str(pipe.name_or_path), "surrogate": surrogate, "train_config": asdict(cfg),
                  "trained_by": "bench/bench_training.py reference_train"}  # fmt: skip
    return spm.SPM(list(targets), layers, cfg.alpha, provenance)


class CallCounter:
    """Counts UNet calls and the rows (sample-forwards) they carry; marks the time of the first call."""

    def __init__(self, unet):
        self.calls = self.rows = 0
        self.first_call: float | None = None
        self.handle = unet.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _module, args, kwargs) -> None:
        if self.first_call is None:
            self.first_call = time.perf_counter()
        sample = args[0] if args else kwargs["sample"]
        self.calls += 1
        self.rows += sample.shape[0]

    def remove(self) -> None:
        self.handle.remove()


def timed_loop(run, pipe, device: str) -> dict:
    """Per-iteration seconds, UNet calls and rows of one loop: `run(on_step)` trains, calling on_step(step, logs)
    after every step (after the loss is read on the host, so the device has finished the step)."""
    counter = CallCounter(pipe.unet)
    marks: list[tuple[float, int, int]] = []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        run(lambda step, logs: marks.append((time.perf_counter(), counter.calls, counter.rows)))
    finally:
        counter.remove()
    starts = [(counter.first_call, 0, 0), *marks[:-1]]  # the first iteration from its first UNet call
    return {
        "seconds": [end[0] - start[0] for start, end in zip(starts, marks)],
        "calls": [end[1] - start[1] for start, end in zip(starts, marks)],
        "rows": [end[2] - start[2] for start, end in zip(starts, marks)],
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
    }


def toy_spm_settings() -> dict:
    """The SPM fitting settings of the toy world's base model (spmbench/models/toy-base.yaml)."""
    import yaml

    spec = Path(__file__).resolve().parents[1] / "spmbench" / "models" / "toy-base.yaml"
    return yaml.safe_load(spec.read_text())["eraser_settings"]["spm"]


def load(model: str, device: str):
    if model in ("sd15", "sd15-tiny"):
        pipe = random_sd15(model == "sd15-tiny", device, torch.float32)
    elif model in ("sdxl", "sdxl-tiny"):
        pipe = random_sdxl(model == "sdxl-tiny", device, torch.float32)
    else:
        pipe = spm.load_pipeline(TOY if model == "toy" else model, device=device, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(pipe, targets: list[str], config: TrainConfig, args, save=None) -> dict:
    """Interleaved rounds: per round, `args.iterations` iterations of each loop at the round's seed; `save` gets
    the summary after every round (a run stopped at its time limit keeps the rounds it finished)."""
    sides = {
        "reference": lambda cfg: lambda on_step: reference_train(pipe, targets, cfg, on_step=on_step),
        "spm.train": lambda cfg: (
            lambda on_step: spm.train(pipe, targets, config=cfg, progress=False, callback=on_step)
        ),
    }
    if args.also_bf16:
        sides["spm.train bf16"] = lambda cfg: (
            lambda on_step: spm.train(pipe, targets, config=replace(cfg, dtype="bfloat16"), progress=False,
                                      callback=on_step)
        )  # fmt: skip
    rounds = []
    for r in range(args.rounds):
        cfg = replace(config, iterations=args.iterations, seed=config.seed + r)
        done, errors = {}, []
        for name, make in sides.items():
            try:
                done[name] = timed_loop(make(cfg), pipe, args.device)
            except torch.OutOfMemoryError as e:  # said in the report (with the rounds done), not lost in a log
                peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else 0
                errors.append(
                    f"{name} ran out of memory in round {r + 1} (peak {peak:.1f} GiB): {' '.join(str(e).split())[:160]}"
                )
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
        if errors:
            summary = summarise(rounds) if rounds else {"loops": {}, "rounds": []}
            summary["error"] = "; ".join(errors)
            if save:
                save(summary)
            raise SystemExit(summary["error"])
        rounds.append(done)
        line = "  ".join(f"{n} {sum(v['seconds']) / len(v['seconds']):.3f} s/it" for n, v in rounds[-1].items())
        print(f"round {r + 1}/{args.rounds}: {line}", flush=True)
        if save:
            save(summarise(rounds))
    return summarise(rounds)


def summarise(rounds: list[dict]) -> dict:
    names = list(rounds[0])
    table = {}
    for name in names:
        seconds = [s for rnd in rounds for s in rnd[name]["seconds"]]
        calls = [c for rnd in rounds for c in rnd[name]["calls"]]
        rows = [c for rnd in rounds for c in rnd[name]["rows"]]
        ratios = [sum(rnd[name]["seconds"]) / sum(rnd["reference"]["seconds"]) for rnd in rounds]
        peaks = [rnd[name]["peak_gib"] for rnd in rounds if rnd[name]["peak_gib"] is not None]
        table[name] = {
            "seconds_per_iteration": statistics.mean(seconds),
            "seconds_per_iteration_median": statistics.median(seconds),
            "unet_calls_per_iteration": statistics.mean(calls),
            "sample_forwards_per_iteration": statistics.mean(rows),
            "ratio_to_reference": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "peak_gib": max(peaks) if peaks else None,
        }
    return {"loops": table, "rounds": rounds}


def markdown(report: dict) -> str:
    s, env, loops = report["settings"], report["environment"], report["result"]["loops"]
    cfg = s["train_config"]
    lines = [
        f"# SPM training: spm.train against the reference loop ({s['model']}, {s['device']})",
        "",
        f"Command: `{s['command']}`",
        f"Date: {env['date']}. Machine: {env['device']}, {env['threads']} torch threads, load average at start "
        f"{env['load_average_at_start']}. torch {env['torch']}, diffusers {env['diffusers']}, transformers "
        f"{env['transformers']}. TF32 matmul {s['tf32_matmul']}, cuDNN TF32 {s['tf32_cudnn']}.",
        f"Settings: targets {s['targets']}; TrainConfig at its defaults (the toy: spmbench/models/toy-base.yaml's spm "
        f"settings) but rollout_steps {cfg['rollout_steps']}, anchor_weight {cfg['anchor_weight']}, lr {cfg['lr']}, "
        f"resolutions {cfg['resolutions'] or 'the model default'} (px), dtype {cfg['dtype']}, {cfg['num_anchors']} "
        f"random anchors + the empty prompt; {len(report['result']['rounds'])} interleaved rounds (of {s['rounds']} "
        f"planned) of {s['iterations']} iterations per "
        "loop, both loops at the round's seed (the same targets, sizes, rollout depths, noise and anchors). "
        "Ratio = that loop's seconds / the reference's over the round, then the median (lower is faster).",
        "",
        "| loop | s / iteration (mean) | median | UNet calls / iteration | sample-forwards / iteration"
        " | time vs reference (min-max) | speed-up | peak GPU memory (GiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if report["result"].get("error"):
        lines += [f"| stopped: {report['result']['error']} | | | | | | | |"]
    for name, row in loops.items():
        peak = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "-"
        lines.append(
            f"| {name} | {row['seconds_per_iteration']:.3f} | {row['seconds_per_iteration_median']:.3f}"
            f" | {row['unet_calls_per_iteration']:.1f} | {row['sample_forwards_per_iteration']:.1f}"
            f" | {row['ratio_to_reference']:.3f}x ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
            f" | {1 / row['ratio_to_reference']:.2f}x | {peak} |"
        )
    lines += [
        "",
        "The reference makes 2k + 2 + 2A + 1 UNet calls per iteration (k rollout steps with CFG as two calls, the "
        "frozen neutral and target, then each of the A anchors frozen and membrane-on, and the membrane-on target); "
        "spm.train makes k + 2 (CFG's halves in one call, all frozen predictions in one, all membrane-on ones in "
        "one). The sample-forwards are equal: the gain is in launches and batching, not in arithmetic.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy", help="toy, sd15, sdxl (random weights), sd15-tiny, sdxl-tiny, or a dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--targets", default="Barkley", help="comma-separated target concepts")
    ap.add_argument("--iterations", type=int, default=4, help="iterations of each loop per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rollout-steps", type=int, default=None, help="T of the rollout (default: TrainConfig's 30)")
    ap.add_argument("--resolutions", default=None, help="comma-separated training sizes in px (default: the model's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--also-bf16", action="store_true", help="also time spm.train with TrainConfig(dtype='bfloat16')")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=None, help="default: reports/bench/training_<model>_<device>")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides: dict = {"seed": args.seed}
    if args.model == "toy":  # the settings the suite fits the toy world's SPMs with (lr, rollout_steps, ...)
        overrides |= {k: v for k, v in toy_spm_settings().items() if k != "iterations"}
    if args.rollout_steps:
        overrides["rollout_steps"] = args.rollout_steps
    if args.resolutions:
        overrides["resolutions"] = tuple(int(v) for v in args.resolutions.split(","))
    config = TrainConfig(**overrides)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    pipe = load(args.model, args.device)
    out = args.out or Path(f"reports/bench/training_{Path(args.model).name}_{args.device.split(':')[0]}")
    settings = dict(
        vars(args), out=None, targets=targets, train_config=asdict(config),
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
        command="python " + " ".join(sys.argv),
    )  # fmt: skip
    env = environment(args)

    def save(result: dict) -> None:
        report = {"settings": settings, "environment": env, "result": result}
        write_atomic(out.with_suffix(".json"), json.dumps(report, indent=1, default=str) + "\n")
        write_atomic(out.with_suffix(".md"), markdown(report))

    result = measure(pipe, targets, config, args, save)
    for name, row in result["loops"].items():
        print(f"{name:16s} {row['seconds_per_iteration']:.3f} s/it  {row['unet_calls_per_iteration']:.1f} calls/it  "
              f"{row['ratio_to_reference']:.3f}x the reference's time")  # fmt: skip
    print(f"wrote {out}.json and .md")


if __name__ == "__main__":
    main()
