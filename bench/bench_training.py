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
    # variants of spm.train timed beside the default (TrainConfig overrides; `iterations` there only sets the
    # seconds per concept), then their erasure and erosion on the toy world (fits judged by the toy judge)
    python bench/bench_training.py --model toy --threads 1 --iterations 30 --rounds 2 \
        --variant rollout_reuse=10 --variant rollout_reuse=30 --quality Barkley,Whiskers --quality-seeds 6

On the toy, the settings are the suite's for toy-concept (spmbench/models/toy-base.yaml's spm settings, then the
application's): seconds per concept = seconds per iteration x the iterations a concept is fitted with there.
A run that measures only speed (or only quality: --rounds 0) keeps the other section of an earlier report.
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
from bench_pipeline_overhead import (  # noqa: E402
    TOY,
    allocator_option,
    environment,
    random_sd15,
    random_sdxl,
    steady_heap,
    write_atomic,
)


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
        self.first_call: tuple[float, float] | None = None  # wall and process CPU time
        self.handle = unet.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _module, args, kwargs) -> None:
        if self.first_call is None:
            self.first_call = (time.perf_counter(), time.process_time())
        sample = args[0] if args else kwargs["sample"]
        self.calls += 1
        self.rows += sample.shape[0]

    def remove(self) -> None:
        self.handle.remove()


def timed_loop(run, pipe, device: str) -> dict:
    """Per-iteration seconds, UNet calls and rows of one loop: `run(on_step)` trains, calling on_step(step, logs)
    after every step (after the loss is read on the host, so the device has finished the step)."""
    counter = CallCounter(pipe.unet)
    marks: list[tuple[float, int, int, float]] = []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        run(lambda step, logs: marks.append((time.perf_counter(), counter.calls, counter.rows, time.process_time())))
    finally:
        counter.remove()
    # the first iteration from its first UNet call
    starts = [(counter.first_call[0], 0, 0, counter.first_call[1]), *marks[:-1]]
    return {
        "seconds": [end[0] - start[0] for start, end in zip(starts, marks)],
        "calls": [end[1] - start[1] for start, end in zip(starts, marks)],
        "rows": [end[2] - start[2] for start, end in zip(starts, marks)],
        # the process's CPU time: on a shared CPU (other jobs beside), the work one thread did, free of waits
        "cpu_seconds": [end[3] - start[3] for start, end in zip(starts, marks)],
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
    }


def toy_spm_settings(app: str = "toy-concept") -> dict:
    """The settings the suite fits the toy world's SPMs with for `app`: toy-base.yaml's, then the application's
    (spmbench.runner.eraser_settings: the application's, the model's, then those tuned on dev)."""
    from spmbench.apps import load_apps
    from spmbench.erasers import ERASERS
    from spmbench.models import load_models
    from spmbench.runner import eraser_settings

    return eraser_settings(ERASERS.get("spm"), load_apps().get(app), load_models().get("toy-base"))


def parse_variant(text: str) -> dict:
    """'rollout_reuse=10,iterations=150' -> TrainConfig overrides (values read as Python literals)."""
    import ast

    overrides = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        try:
            overrides[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise SystemExit(
                f"--variant {text!r}: {part!r} is not NAME=VALUE with a Python literal (10, 1e-2, True)"
            ) from None
    unknown = set(overrides) - {f for f in TrainConfig.__dataclass_fields__}
    if unknown:
        raise SystemExit(f"--variant {text!r}: TrainConfig has no {sorted(unknown)[0]!r}")
    return overrides


def variant_name(overrides: dict) -> str:
    return "spm.train " + ",".join(f"{k}={v}" for k, v in overrides.items()) if overrides else "spm.train"


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
    for overrides in args.variants:  # timed at the round's iterations (`iterations` sets only the per-concept cost)
        speed = {k: v for k, v in overrides.items() if k != "iterations"}
        sides[variant_name(overrides)] = lambda cfg, speed=speed: (
            lambda on_step: spm.train(pipe, targets, config=replace(cfg, **speed), progress=False, callback=on_step)
        )
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
            save(summarise(rounds, args.concept_iterations))
    return summarise(rounds, args.concept_iterations)


def summarise(rounds: list[dict], concept_iterations: dict[str, int] | None = None) -> dict:
    """Per loop: mean and median seconds per iteration, calls and rows per iteration, the median over rounds of its
    time / the reference's; with `concept_iterations` (loop -> iterations per concept), the seconds per concept."""
    names = list(rounds[0])
    table = {}
    for name in names:
        seconds = [s for rnd in rounds for s in rnd[name]["seconds"]]
        calls = [c for rnd in rounds for c in rnd[name]["calls"]]
        rows = [c for rnd in rounds for c in rnd[name]["rows"]]
        ratios = [sum(rnd[name]["seconds"]) / sum(rnd["reference"]["seconds"]) for rnd in rounds]
        cpu = [s for rnd in rounds for s in rnd[name]["cpu_seconds"]]
        cpu_ratios = [sum(rnd[name]["cpu_seconds"]) / sum(rnd["reference"]["cpu_seconds"]) for rnd in rounds]
        peaks = [rnd[name]["peak_gib"] for rnd in rounds if rnd[name]["peak_gib"] is not None]
        table[name] = {
            "seconds_per_iteration": statistics.mean(seconds),
            "seconds_per_iteration_median": statistics.median(seconds),
            "unet_calls_per_iteration": statistics.mean(calls),
            "sample_forwards_per_iteration": statistics.mean(rows),
            "ratio_to_reference": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "cpu_seconds_per_iteration": statistics.mean(cpu),
            "cpu_ratio_to_reference": statistics.median(cpu_ratios),
            "peak_gib": max(peaks) if peaks else None,
        }
        if concept_iterations:
            table[name]["iterations_per_concept"] = concept_iterations[name]
            table[name]["seconds_per_concept"] = statistics.mean(seconds) * concept_iterations[name]
            table[name]["cpu_seconds_per_concept"] = statistics.mean(cpu) * concept_iterations[name]
    if concept_iterations:
        for name, row in table.items():  # the per-iteration ratio, scaled by the iterations each loop fits with
            scale = concept_iterations[name] / concept_iterations["reference"]
            row["concept_ratio_to_reference"] = row["ratio_to_reference"] * scale
            row["concept_cpu_ratio_to_reference"] = row["cpu_ratio_to_reference"] * scale
    return {"loops": table, "rounds": rounds}


def quality(pipe, args, config: TrainConfig) -> dict:
    """Erasure and erosion of single-target SPMs fitted by spm.train with `config` and with each variant, on the toy
    world: each applied as the suite's 'spm' eraser (FT on), the application's prompts generated at seeds
    0..args.quality_seeds-1 with toy-base's sampling settings, judged by the toy judge; the original model beside."""
    import tempfile

    import numpy as np

    from spmbench.apps import load_apps
    from spmbench.erasers import ERASERS
    from spmbench.judges.toy import ToyJudge
    from spmbench.models import load_models

    app = replace(load_apps().get(args.app), seeds=tuple(range(args.quality_seeds)))
    model, judge, eraser = load_models().get("toy-base"), ToyJudge(), ERASERS.get("spm")

    def judged(artifacts: list[Path], rows) -> list[bool]:
        present = []
        with eraser.apply(pipe, artifacts) if artifacts else ERASERS.get("none").apply(pipe, []) as generate:
            for start in range(0, len(rows), 64):
                batch = rows[start : start + 64]
                out = generate(
                    [model.caption_prefix + r.prompt + model.caption_suffix for r in batch],
                    num_inference_steps=model.num_inference_steps, guidance_scale=model.guidance_scale,
                    generator=[torch.Generator().manual_seed(r.seed) for r in batch],
                    height=model.resolution, width=model.resolution,
                )  # fmt: skip
                images = torch.from_numpy(np.stack([np.asarray(i.convert("RGB")) for i in out.images]))
                present += judge.present(images.permute(0, 3, 1, 2).float() / 255, [r.concept for r in batch])
        return present

    results = []
    with tempfile.TemporaryDirectory() as fits:
        for target in args.quality:
            rows = app.rows((target,))
            results.append({"target": target, "fit": "original model", **counts(rows, judged([], rows))})
            print(f"quality {target} original: {results[-1]['sets']}", flush=True)
            for overrides in [{}, *args.variants]:
                start, cpu = time.perf_counter(), time.process_time()
                trained = spm.train(pipe, [target], config=replace(config, **overrides), progress=False)
                seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
                path = Path(fits) / "spm.safetensors"
                trained.save(path)
                entry = {
                    "target": target,
                    "fit": variant_name(overrides),
                    "fit_seconds": seconds,
                    "fit_cpu_seconds": cpu,
                }
                results.append(entry | counts(rows, judged([path], rows)))
                print(f"quality {target} {entry['fit']} ({seconds:.0f} s): {results[-1]['sets']}", flush=True)
    return {"app": app.name, "seeds": list(app.seeds), "judge": judge.identity, "fits": results}


def counts(rows, present: list[bool]) -> dict:
    """Per prompt set: images with their concept present, n, the rate and its 95 % Wilson interval."""
    from spmbench.stats import wilson

    sets = {}
    for row, seen in zip(rows, present):
        sets.setdefault(row.set, []).append(seen)
    return {
        "sets": {name: {"present": sum(v), "n": len(v), "rate": sum(v) / len(v), "wilson95": wilson(sum(v), len(v))}
                 for name, v in sets.items()}
    }  # fmt: skip


def markdown(report: dict) -> str:
    lines = speed_markdown(report) if "result" in report else ["# SPM training", ""]
    if report.get("note"):  # the reader's summary, given with --note, after the title
        lines[1:1] = ["", *report["note"].split("\n")]
    if "quality" in report:
        lines += quality_markdown(report["quality"])
    return "\n".join(lines)


def speed_markdown(report: dict) -> list[str]:
    s, env, loops = report["settings"], report["environment"], report["result"]["loops"]
    cfg = s["train_config"]
    lines = [
        f"# SPM training: spm.train against the reference loop ({s['model']}, {s['device']})",
        "",
        f"Command: `{s['command']}`",
        f"Date: {env['date']}. Machine: {env['device']}, {env['threads']} torch threads, load average at start "
        f"{env['load_average_at_start']}. torch {env['torch']}, diffusers {env['diffusers']}, transformers "
        f"{env['transformers']}. TF32 matmul {s['tf32_matmul']}, cuDNN TF32 {s['tf32_cudnn']}.",
        f"Settings: targets {s['targets']}; TrainConfig at its defaults (the toy: the suite's fit for "
        f"{s.get('app', 'toy-concept')}, toy-base.yaml's spm settings then the application's) but rollout_steps "
        f"{cfg['rollout_steps']}, anchor_weight {cfg['anchor_weight']}, lr {cfg['lr']}, warmup_steps "
        f"{cfg['warmup_steps']}, resolutions {cfg['resolutions'] or 'the model default'} (px), dtype {cfg['dtype']}, "
        f"{cfg['num_anchors']} random anchors + the empty prompt + {cfg['vocabulary_anchors']} vocabulary prompts; "
        f"{len(report['result']['rounds'])} interleaved rounds (of {s['rounds']} planned) of {s['iterations']} "
        "iterations per loop, all loops at the round's seed (at rollout_reuse 1 the same targets, sizes, rollout "
        "depths, noise and anchors). "
        "Ratio = that loop's seconds / the reference's over the round, then the median (lower is faster).",
        "",
        "| loop | s / iteration (mean) | median | CPU s / iteration | UNet calls / iteration"
        " | sample-forwards / iteration | time vs reference (min-max) | CPU time vs reference | peak GPU memory (GiB)"
        " | iterations / concept | s / concept | CPU s / concept | concept time vs reference (CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if report["result"].get("error"):
        lines += [f"| stopped: {report['result']['error']} |" + " |" * 12]
    for name, row in loops.items():
        peak = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "-"
        cpu = row.get("cpu_seconds_per_iteration")  # absent from reports made before it was measured
        cpu_seconds, cpu_ratio = (f"{cpu:.3f}", f"{row['cpu_ratio_to_reference']:.3f}x") if cpu else ("-", "-")
        concept = (
            f" | {row['iterations_per_concept']} | {row['seconds_per_concept']:.0f}"
            f" | {row['cpu_seconds_per_concept']:.0f} | {row['concept_ratio_to_reference']:.3f}x"
            f" ({row['concept_cpu_ratio_to_reference']:.3f}x)"
            if "seconds_per_concept" in row
            else " | - | - | - | -"
        )
        lines.append(
            f"| {name} | {row['seconds_per_iteration']:.3f} | {row['seconds_per_iteration_median']:.3f}"
            f" | {cpu_seconds}"
            f" | {row['unet_calls_per_iteration']:.1f} | {row['sample_forwards_per_iteration']:.1f}"
            f" | {row['ratio_to_reference']:.3f}x ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
            f" | {cpu_ratio} | {peak}{concept} |"
        )
    lines += [
        "",
        "The reference makes 2k + 2 + 2A + 1 UNet calls per iteration (k rollout steps with CFG as two calls, the "
        "frozen neutral and target, then each of the A anchors frozen and membrane-on, and the membrane-on target); "
        "spm.train makes k + 2 (CFG's halves in one call, all frozen predictions in one, all membrane-on ones in "
        "one). The sample-forwards are equal: the gain is in launches and batching, not in arithmetic. With "
        "rollout_reuse R, one rollout (all its trajectories in one batch per DDIM step) serves R iterations: about "
        "(T - 1) / R rollout calls per iteration; seconds per concept = mean seconds per iteration x iterations per "
        "concept (the suite's, or the variant's own). CPU s: the process's CPU time (one torch thread): on a shared "
        "machine the work done without the waits for a core, which wall time includes.",
        "",
    ]
    return lines


def quality_markdown(quality: dict) -> list[str]:
    q = quality["result"]
    lines = [
        "## Erasure and erosion (toy world)",
        "",
        f"Command: `{quality['command']}`. Date: {quality['date']}. Application {q['app']} prompts at seeds "
        f"{q['seeds'][0]}-{q['seeds'][-1]}, toy-base sampling, {q['judge']}; SPM applied as the suite's 'spm' eraser "
        "(FT on). Cells: concept present / n, rate [95 % Wilson interval]. Erasure: target lower is better; "
        "erosion: near and far higher is better. Fit seconds: the whole fit, wall time, the machine as above.",
        "",
        "| target | fit | fit s | fit CPU s | target | near | far |",
        "|---|---|---:|---:|---|---|---|",
    ]
    for fit in q["fits"]:
        cells = []
        for name in ("target", "near", "far"):
            c = fit["sets"].get(name)
            cells.append(
                f"{c['present']}/{c['n']} = {c['rate']:.2f} [{c['wilson95'][0]:.2f}, {c['wilson95'][1]:.2f}]"
                if c
                else "-"
            )
        seconds = f"{fit['fit_seconds']:.0f} | {fit['fit_cpu_seconds']:.0f}" if "fit_seconds" in fit else "- | -"
        lines.append(f"| {fit['target']} | {fit['fit']} | {seconds} | {' | '.join(cells)} |")
    return [*lines, ""]


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
    ap.add_argument(
        "--variant",
        dest="variants",
        type=parse_variant,
        action="append",
        default=[],
        help="also time spm.train with these TrainConfig overrides, e.g. rollout_reuse=10 (repeatable)",
    )
    ap.add_argument("--app", default="toy-concept", help="the toy application whose SPM settings and prompts are used")
    ap.add_argument(
        "--quality",
        type=lambda v: [t.strip() for t in v.split(",") if t.strip()],
        default=[],
        help="fit single-target SPMs for these toy concepts (default and each variant) and judge them",
    )
    ap.add_argument("--quality-seeds", type=int, default=6, help="seeds per prompt in the quality check")
    ap.add_argument("--note", default=None, help="a Markdown file: the summary put under the report's title")
    allocator_option(ap)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    steady_heap(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides: dict = {"seed": args.seed}
    if args.model == "toy":  # the settings the suite fits the toy world's SPMs with (lr, rollout_steps, ...)
        suite = toy_spm_settings(args.app)
        overrides |= {k: v for k, v in suite.items() if k in TrainConfig.__dataclass_fields__}
    per_concept = overrides.get("iterations", TrainConfig.iterations)
    args.concept_iterations = {"reference": per_concept, "spm.train": per_concept, "spm.train bf16": per_concept}
    args.concept_iterations |= {variant_name(v): v.get("iterations", per_concept) for v in args.variants}
    if args.rollout_steps:
        overrides["rollout_steps"] = args.rollout_steps
    if args.resolutions:
        overrides["resolutions"] = tuple(int(v) for v in args.resolutions.split(","))
    config = TrainConfig(**overrides)  # the suite's fit (its iterations); the speed rounds set their own
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    pipe = load(args.model, args.device)
    out = args.out or Path(f"reports/bench/training_{Path(args.model).name}_{args.device.split(':')[0]}")
    settings = dict(
        vars(args), out=None, targets=targets, train_config=asdict(config),
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
        command="python " + " ".join(sys.argv),
    )  # fmt: skip
    env = environment(args)
    earlier = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}

    def save(result: dict | None = None, quality_result: dict | None = None) -> None:
        # the section this run does not measure is kept from the earlier report
        report = {k: earlier[k] for k in ("note", "settings", "environment", "result", "quality") if k in earlier}
        if args.note:
            report["note"] = Path(args.note).read_text().strip()
        if result is not None:
            report |= {"settings": settings, "environment": env, "result": result}
        if quality_result is not None:
            report["quality"] = {"command": settings["command"], "date": env["date"], "environment": env,
                                 "train_config": asdict(config), "result": quality_result}  # fmt: skip
        earlier.clear()
        earlier.update(report)
        write_atomic(out.with_suffix(".json"), json.dumps(report, indent=1, default=str) + "\n")
        write_atomic(out.with_suffix(".md"), markdown(report))

    if args.rounds:
        result = measure(pipe, targets, config, args, save)
        for name, row in result["loops"].items():
            print(f"{name:16s} {row['seconds_per_iteration']:.3f} s/it  {row['unet_calls_per_iteration']:.1f} "
                  f"calls/it  {row['ratio_to_reference']:.3f}x the reference's time")  # fmt: skip
    if args.quality:
        if args.model != "toy":
            raise SystemExit("--quality judges fits on the toy world: give --model toy")
        save(quality_result=quality(pipe, args, config))
    print(f"wrote {out}.json and .md")


if __name__ == "__main__":
    main()
