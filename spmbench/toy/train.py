"""Train the whole toy world from nothing: tokenizer, VAE, judge, base model, derivatives.

Every stage is deterministic, checkpoints every `ckpt_every` steps into `workdir/<stage>/` (an spm.Checkpoint
tied to the stage's settings) and resumes from there; a finished stage leaves its artifact and is skipped on the
next call.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spm import Checkpoint
from spm.files import save_torch_atomic, write_text_atomic
from spmbench.toy import models, worlds
from spmbench.toy.data import render_workers


log = logging.getLogger(__name__)
# Order of the list fixes each stage's RNG stream: new stages go at the end, wherever they run.
# World 2 trains the first seven; world 3 all (see spmbench.toy.worlds). "merge" trains nothing.
STAGES = ("tokenizer", "vae", "judge", "base", "pastel", "verbose", "decoder", "dreambooth", "newconcept", "continued",
          "merge")  # fmt: skip
TEXT_ENCODER_MODES = ("frozen", "embeddings", "full")
FINE_TUNES = ("pastel", "verbose", "dreambooth", "newconcept", "continued")


@dataclass(frozen=True)
class ToyTrainConfig:
    seed: int = 0
    vae_steps: int = 6000
    # 1,500 steps read the shape of 87.75 % of VAE reconstructions of pastel styled renders (91.25 %
    # for base ones), below what toy-pastel draws: 3,000 read 92.25 and 93.25 %, and 99.75 % of renders.
    judge_steps: int = 3000
    judge_vae_fraction: float = 0.5
    base_steps: int = 24000
    # The base's lr falls linearly to a tenth over its last base_decay_steps steps (0: constant after the
    # warm-up, as world 2's base trained). World 3's base, probed at 11,000 and 17,500 constant-lr steps, drew
    # plain shapes 82 -> 85 % right and styled ones 72 -> 72 % (the VAE's reconstructions of styled renders
    # read 89 %): the decay is the usual last push, its effect measured in the card.
    base_decay_steps: int = 0
    # Each derivative's steps and what of its text encoder it fine-tunes with its UNet: "frozen",
    # "embeddings" (the token embedding table only) or "full"; each ships its own encoder copy.
    # toy-verbose's captions add words the base never trained on ("masterpiece", "highly detailed"):
    # frozen, its held-out animal phrasing stayed 17.5 points below its trained ones (14 after 4,000
    # steps); "full" closed that (4 points) but its held-out styled colour fell 11 points below;
    # "embeddings" learns the new words and keeps the base's composition: 0 and 8.5 points.
    verbose_steps: int = 2000
    verbose_text_encoder: str = "embeddings"
    # toy-pastel shifts pictures, not words. At 2,000 steps (embeddings) it drew some red as orange:
    # object colour 97.5 % against the base's 100 %. 4,000 steps fix that (99.2 %); with the
    # embeddings also trained, its held-out styled phrasing then fell 14 points below (frozen: 8).
    pastel_steps: int = 4000
    pastel_text_encoder: str = "frozen"
    # Fine-tuning at the base's 3e-4 eroded paraphrase generalisation (toy-verbose's held-out animal
    # phrasing 19.5 points below its trained ones; at least as good as the base: 4.2 / 11.6 points short).
    derivative_lr: float = 1e-4
    decoder_steps: int = 2000
    decoder_lr: float = 1e-4
    # Each pixel's reconstruction loss in the VAE and decoder stages is weighted 1 + this x the share of it
    # the subject covers (0: unweighted, as world 2's). Unweighted, world 3's VAE spent its capacity on busy
    # styled backgrounds and returned the shapes on them as blobs (styled shapes read 84-86.5 %). Weighted 8,
    # a probe VAE read styled shapes 60 % after 1,000 steps against 41 % unweighted; the decoder stage alone,
    # weighted, on the unweighted encoder's latents, did not raise them (83 % after 1,500 steps).
    foreground_weight: float = 0.0
    # The share of UNet-stage captions that get a filler token (twice over: some get two) at a random word
    # boundary; fillers are token ids no caption of any split uses, whose embeddings never train, as a word held
    # out of training never does. Without them world 3's base drew held-out phrasings' shapes 71 % right against
    # 84 % for the same scenes and seeds with the one unseen phrase swapped for a trained one (n = 150): a toy
    # text encoder has no pretrained meaning for an unseen word, and the denoiser never learnt to pass one over.
    # Probe (2026-12-02): that base fine-tuned 1,500 steps at 0.2 drew held-out styled objects 83 % right and the
    # swapped ones 84 % (objects 85 / 84 %); the same fine-tune without fillers 68 / 81 % (objects 79 / 86 %).
    filler_rate: float = 0.0
    batch_size: int = 64
    lr: float = 3e-4
    pool_size: int = 40000
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    ckpt_every: int = 500
    # The VAE's latent channels (8x8 latents at 32 px), which every UNet of the family then denoises. World 3's
    # VAE at 4 keeps the shape of 98 % of plain objects but 84-86.5 % of styled ones (busy backgrounds at 32 px):
    # the ceiling under the card's shape bars.
    latent_channels: int = 4
    # World 3 only (world 2 ignores them; see WORLD_DEFAULTS for world 3's other settings).
    world: int = worlds.DEFAULT_WORLD
    # DreamBooth-style: one character (with prior preservation) at the derivatives' lr; the
    # character's name is a word the base knows, so the text encoder stays frozen.
    dreambooth_steps: int = 2000
    dreambooth_text_encoder: str = "frozen"
    # A style the base never saw: its name's token embeddings are untrained, so it learns them.
    newconcept_steps: int = 3000
    newconcept_text_encoder: str = "embeddings"
    # "v1.5-like": the base trained on (UNet and text encoder) on a fresh pool of the same world.
    continued_steps: int = 6000
    continued_text_encoder: str = "full"
    continued_lr: float = 1e-4

    def __post_init__(self):
        worlds.get(self.world)  # a one-line error for an unknown world
        for name in ("batch_size", "pool_size", "ckpt_every", "latent_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.foreground_weight < 0:
            raise ValueError(f"foreground_weight must be at least 0, not {self.foreground_weight}")
        if not 0 <= self.filler_rate <= 1:
            raise ValueError(f"filler_rate must be between 0 and 1, not {self.filler_rate}")
        for f in fields(self):
            if f.name.endswith("_steps") and getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be at least 0, not {getattr(self, f.name)}")
        for name in FINE_TUNES:
            mode = getattr(self, f"{name}_text_encoder")
            if mode not in TEXT_ENCODER_MODES:
                raise ValueError(f"{name}_text_encoder must be one of {', '.join(TEXT_ENCODER_MODES)}, not {mode!r}")


# World 3 has about twice world 2's concepts and many more phrasings: more base steps on a larger pool.
# (v2's stage times on 2 idle cores: vae 6,084 s, judge 1,446, base 4,993 for 24,000 steps; at those
# rates world 3's plan takes about 5.4 h with its larger pools.)
WORLD_DEFAULTS = {
    2: {},
    3: {
        "world": 3,
        "base_steps": 28000,
        "base_decay_steps": 6000,
        "pool_size": 64000,
        "judge_steps": 4000,
        "vae_steps": 8000,
        "foreground_weight": 8.0,
        "filler_rate": 0.2,
    },
}


def config_for_world(version: int, **settings) -> ToyTrainConfig:
    """World `version`'s default settings, with `settings` replacing some of them."""
    worlds.get(version)
    return ToyTrainConfig(**(WORLD_DEFAULTS[version] | settings))


# -- checkpoints ---------------------------------------------------------------------------------
# Each stage's loop state is one spm.Checkpoint at workdir/<stage>/ckpt.pt: its modules' state dicts
# under their names ("vae", "opt", "unet", ...), "np_rng", "torch_rng", "step" and a fingerprint of
# the stage's settings (stage_settings), which also names the setting that changed when one is refused.


class SettingsChanged(ValueError):
    """A workdir holds checkpoints this run must not resume: made with other settings, or not checkpoints."""


# Settings that concern only some stages; every other one (seed, batch size, ...) concerns them all.
_STAGES_OF_SETTING = {
    "judge_vae_fraction": ("judge",),
    "decoder_lr": ("decoder",),
    "derivative_lr": ("pastel", "verbose", "dreambooth", "newconcept"),
    "pastel_text_encoder": ("pastel",),
    "verbose_text_encoder": ("verbose",),
    "dreambooth_text_encoder": ("dreambooth",),
    "newconcept_text_encoder": ("newconcept",),
    "continued_text_encoder": ("continued",),
    "continued_lr": ("continued",),
    "filler_rate": ("base", *FINE_TUNES),
}


def stage_settings(stage: str, values: Mapping[str, Any]) -> dict:
    """The settings among `values` (a ToyTrainConfig as a dict) that `stage`'s checkpoint is tied to.
    Step counts and ckpt_every are not: a stage may train on, or stop, where a later run asks."""
    return {
        f.name: values[f.name]
        for f in fields(ToyTrainConfig)
        if f.name in values
        and not f.name.endswith("_steps")
        and f.name != "ckpt_every"
        and stage in _STAGES_OF_SETTING.get(f.name, STAGES[1:])
    }


def stage_checkpoint(workdir: Path, stage: str, cfg: ToyTrainConfig) -> Checkpoint:
    """Where `stage` keeps its loop state, tied to its settings in `cfg`."""
    return Checkpoint(workdir / stage / "ckpt.pt", stage_settings(stage, asdict(cfg)), every=cfg.ckpt_every)


class _NumpyRNG:
    """A numpy generator as a state spm.Checkpoint saves: its bit generator's state as JSON text, the
    layout every toy checkpoint has always had."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def state_dict(self) -> str:
        return json.dumps(self.rng.bit_generator.state)

    def load_state_dict(self, state: str) -> None:
        self.rng.bit_generator.state = json.loads(state)


def check_resumable(workdir: Path, cfg: ToyTrainConfig) -> None:
    """Before anything trains, refuse stages whose checkpoints were made with other settings, naming the
    first such setting; then tie every checkpoint kept to this run's settings (one that predates a setting
    added since: a setting a checkpoint does not record is its default)."""
    current = asdict(cfg)
    recorded = {
        stage: _recorded_settings(workdir, stage) for stage in STAGES[1:] if (workdir / stage / "ckpt.pt").exists()
    }
    defaults = asdict(ToyTrainConfig())
    made_with = {  # each stage's own settings, as its checkpoint was made
        stage: {name: settings.get(name, defaults[name]) for name in stage_settings(stage, current)}
        for stage, settings in recorded.items()
    }
    for name, value in current.items():
        trained = [stage for stage, made in made_with.items() if made.get(name, value) != value]
        if trained:
            raise SettingsChanged(
                f"{workdir} holds {', '.join(trained)} trained with {name}={made_with[trained[0]][name]!r}, "
                f"not {value!r}: delete {'those stage folders' if len(trained) > 1 else 'that stage folder'} "
                "to retrain, or use another --workdir"
            )
    for stage in recorded:
        checkpoint = stage_checkpoint(workdir, stage, cfg)
        saved = _read_checkpoint(checkpoint.path)
        if saved.get("fingerprint") != checkpoint.fingerprint:
            save_torch_atomic(dict(saved) | {"fingerprint": checkpoint.fingerprint}, checkpoint.path)


def _read_checkpoint(path: Path) -> dict:
    # mmap: only the small entries are read from a file of hundreds of MB
    try:
        saved = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception:  # pickle, zip and EOF errors: torch raises many kinds
        saved = None
    if not (isinstance(saved, dict) and "step" in saved):
        raise SettingsChanged(f"{path} is not a training checkpoint: delete it to start over")
    return saved


def _recorded_settings(workdir: Path, stage: str) -> dict:
    """The settings `stage`'s checkpoint was made with: its fingerprint's."""
    path = workdir / stage / "ckpt.pt"
    saved = _read_checkpoint(path)
    if "fingerprint" not in saved:  # the layout before spm.Checkpoint: its settings are not known
        raise SettingsChanged(f"{path} has no fingerprint (saved before spm.Checkpoint): delete it to retrain")
    return json.loads(saved["fingerprint"])


class TimeBudgetReached(Exception):
    """Training stopped at a checkpoint when its time budget ran out; rerunning resumes there."""


_deadline: float | None = None  # time.monotonic() past which _loop checkpoints and stops
PROGRESS_EVERY = 25  # steps between progress-bar readings: each reads a loss back from the device


def _loop(name: str, cfg: ToyTrainConfig, workdir: Path, steps: int, modules: dict, step_fn) -> None:
    """The shared resumable loop: step_fn(step, rng, gen) -> dict of scalar tensors for the progress bar.
    Checkpoints every `ckpt_every` steps with the time spent so far (summed over resumed runs)."""
    (workdir / name).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([cfg.seed, STAGES.index(name)])
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + STAGES.index(name))
    state = modules | {"np_rng": _NumpyRNG(rng), "torch_rng": gen}
    checkpoint, timing = stage_checkpoint(workdir, name, cfg), workdir / name / "time.json"
    # A finished stage keeps no optimiser state: training it on restarts the optimiser.
    start, _ = checkpoint.resume(state, optional=("opt",))
    if start >= steps:  # already finished: nothing to train, nothing to add to its time
        return
    spent = json.loads(timing.read_text())["seconds"] if timing.exists() else 0.0
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=name)
    t0 = time.time()
    for step in bar:
        shown = step_fn(step, rng, gen)
        if (step + 1) % PROGRESS_EVERY == 0 or step + 1 == steps:
            bar.set_postfix({k: f"{float(v):.4g}" for k, v in shown.items()})
        out_of_time = _deadline is not None and time.monotonic() > _deadline
        if checkpoint.due(step + 1) or step + 1 == steps or out_of_time:
            checkpoint.save(step + 1, state)
            write_text_atomic(timing, json.dumps({"seconds": spent + time.time() - t0, "steps": step + 1}))
        if out_of_time and step + 1 < steps:
            bar.close()
            raise TimeBudgetReached(f"time budget reached at {name} step {step + 1} of {steps}")
    checkpoint.drop("opt")  # a finished stage's checkpoint keeps the weights only: half the size, for committing


class EMA(torch.optim.swa_utils.AveragedModel):
    """torch's EMA AveragedModel without its GPU syncs: it reads its update count back from the
    device twice per update. Same arithmetic, same state_dict (so checkpoints load either way)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay))
        self.decay = decay
        self._updates: int | None = None  # host copy of n_averaged, read once after (re)loading
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_updates", None))

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        if self._updates is None:
            self._updates = int(self.n_averaged)
        averaged, current = list(self.module.parameters()), [p.detach() for p in model.parameters()]
        if self._updates == 0:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)
        else:
            torch._foreach_lerp_(averaged, current, 1 - self.decay)
        for b_averaged, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_averaged.copy_(b)
        self.n_averaged += 1
        self._updates += 1


def _warmup(step: int, warmup: int = 500) -> float:
    return min(1.0, (step + 1) / warmup)


def _decay(step: int, steps: int, decay_steps: int) -> float:
    """The lr factor of a stage of `steps` steps whose last `decay_steps` fall linearly to a tenth."""
    decay_steps = min(decay_steps, steps)
    if decay_steps <= 0 or step < steps - decay_steps:
        return 1.0
    return 1.0 - 0.9 * (step - (steps - decay_steps) + 1) / decay_steps


# -- stages --------------------------------------------------------------------------------------


def train_tokenizer(workdir: Path, world: worlds.World):
    out = workdir / "tokenizer"
    if not (out / "tokenizer_config.json").exists():
        models.build_tokenizer(world.data.tokenizer_corpus(), world.tokenizer_vocab).save_pretrained(out)
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(out)


def _reader_dialect(rng: np.random.Generator, world: worlds.World) -> str:
    """The dialect of one VAE or judge batch: 30 % in the pastel palette a derivative draws in."""
    usual, pastel = world.reader_dialects
    return pastel if rng.random() < 0.3 else usual


def _vae_images(
    rng: np.random.Generator, cfg: ToyTrainConfig, device: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fresh renders in [-1, 1] for the VAE, and each pixel's loss weight, 1 + cfg.foreground_weight x the share of
    it the subject covers (None when that weight is 0: world 2's batches, drawn as they always were)."""
    world = worlds.get(cfg.world)
    weighted = bool(cfg.foreground_weight)
    batch = world.data.sample_batch(rng, cfg.batch_size, dialect=_reader_dialect(rng, world), foreground=weighted)
    x = models.to_device(world.data.to_tensor([b[0] for b in batch]), device) * 2 - 1
    if not weighted:
        return x, None
    covered = torch.from_numpy(np.stack([b[3] for b in batch]))[:, None]
    return x, models.to_device(1.0 + cfg.foreground_weight * covered, device)


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """L1 + MSE; with per-pixel `weight` (N, 1, H, W), their weighted mean."""
    if weight is None:
        return F.l1_loss(rec, x) + F.mse_loss(rec, x)
    return (((rec - x).abs() + (rec - x).square()) * weight).mean() / weight.mean()


def train_vae(cfg: ToyTrainConfig, workdir: Path, device: str):
    vae = models.build_vae(cfg.latent_channels).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)

    def step_fn(step, rng, gen):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _warmup(step, 200)
        x, weight = _vae_images(rng, cfg, device)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(models.sample_latent(posterior, gen)).sample
        kl = posterior.kl().mean() / x[0].numel()
        loss = reconstruction_loss(rec, x, weight) + 1e-4 * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"rec": F.mse_loss(rec, x).detach(), "kl": kl.detach()}

    _loop("vae", cfg, workdir, cfg.vae_steps, {"vae": vae, "opt": opt}, step_fn)
    vae.eval()
    # SD's latent scaling: unit-variance latents for the UNet.
    rng = np.random.default_rng(cfg.seed)
    world = worlds.get(cfg.world)
    with torch.no_grad():
        batch = world.data.sample_batch(rng, 512, dialect=world.reader_dialects[0])
        x = world.data.to_tensor([b[0] for b in batch]).to(device) * 2 - 1
        std = vae.encode(x).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae


def sharpen_decoder(cfg: ToyTrainConfig, workdir: Path, vae, device: str):
    """Fine-tune the VAE decoder alone, on the encoder's sampled latents: the VAE stage leaves it
    short of converged (the judge read the shape of 85 % of reconstructions; 88 % after 1,000 more
    decoder steps), and the frozen encoder keeps the latent space every UNet is trained in, so no
    UNet needs retraining. (An extra L1 term on image gradients did not raise that rate.)"""
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)

    def step_fn(step, rng, gen):
        for g in opt.param_groups:
            g["lr"] = cfg.decoder_lr * _warmup(step, 100)
        x, weight = _vae_images(rng, cfg, device)
        with torch.no_grad():
            z = models.sample_latent(vae.encode(x).latent_dist, gen)
        rec = vae.decode(z).sample
        loss = reconstruction_loss(rec, x, weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"rec": F.mse_loss(rec, x).detach()}

    _loop("decoder", cfg, workdir, cfg.decoder_steps, {"vae": vae, "opt": opt}, step_fn)
    return vae.requires_grad_(False).eval()


def blur_augment(images: torch.Tensor, gen: torch.Generator, max_sigma: float = 1.5) -> torch.Tensor:
    """A Gaussian blur of random width (0 to `max_sigma` px) per image. Generations come through a
    VAE decoder that softens edges; a judge trained on crisp renders alone misread them (shape on
    88 % of reconstructions; 94 % after 300 steps with this augmentation, crisp renders still 100 %)."""
    n, c, h, w = images.shape
    sigma = models.to_device((torch.rand(n, generator=gen) * max_sigma).clamp(min=1e-3), images.device)
    offsets = torch.arange(-3, 4, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # one per image channel
    x = images.reshape(1, n * c, h, w)
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), kernel.view(n * c, 1, 1, 7), groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), kernel.view(n * c, 1, 7, 1), groups=n * c)
    return x.reshape(n, c, h, w)


def vae_augment(images: torch.Tensor, vae, gen: torch.Generator, fraction: float) -> torch.Tensor:
    """Replace a random `fraction` of the images (in [0, 1]) by their VAE reconstructions. Every
    generation is decoded by this VAE, which loses texture detail: on styled shapes a judge trained
    on renders and blur alone read 98 % of the renders but 82 % of their reconstructions."""
    pick = (torch.rand(len(images), generator=gen) < fraction).nonzero().squeeze(1)  # on the host: no sync
    if not len(pick):
        return images
    pick = models.to_device(pick, images.device)
    out = images.clone()
    out[pick] = models.reconstruct(vae, images[pick], gen)
    return out


def train_judge(cfg: ToyTrainConfig, workdir: Path, device: str, vae=None):
    """The judge CNN, on fresh renders; with `vae`, a share of each batch is its reconstructions."""
    world = worlds.get(cfg.world)
    data = world.data
    judge = models.Judge(data.JUDGE_HEADS).to(device)
    opt = torch.optim.AdamW(judge.parameters(), lr=1e-3, weight_decay=1e-4)

    def step_fn(step, rng, gen):
        for g in opt.param_groups:
            g["lr"] = 1e-3 * _warmup(step, 100) * (0.1 if step > 0.8 * cfg.judge_steps else 1.0)
        batch = data.sample_batch(rng, 128, dialect=_reader_dialect(rng, world))
        images = models.to_device(data.to_tensor([b[0] for b in batch]), device)
        if vae is not None:
            images = vae_augment(images, vae, gen, cfg.judge_vae_fraction)
        logits = judge(blur_augment(images, gen))
        targets = {k: models.to_device(v, device) for k, v in data.label_tensors([b[2] for b in batch]).items()}
        loss = sum(F.cross_entropy(logits[k], targets[k], ignore_index=data.IGNORE) for k in logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    _loop("judge", cfg, workdir, cfg.judge_steps, {"judge": judge, "opt": opt}, step_fn)
    return judge.eval()


def _latent_pool(cfg: ToyTrainConfig, vae, tokenizer, dialect: str, size: int):
    """Render, caption and VAE-encode a fixed pool once; training then only reads tensors."""
    data = worlds.get(cfg.world).data
    rng = np.random.default_rng([cfg.seed, 99, list(data.DIALECTS).index(dialect)])
    means, stds, texts = [], [], []
    with torch.no_grad():
        for _ in tqdm(range(0, size, 256), desc=f"encode {dialect} pool"):
            batch = data.sample_batch(rng, 256, dialect=dialect)
            dist = vae.encode(data.to_tensor([b[0] for b in batch]).to(vae.device) * 2 - 1).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
            texts += [b[1] for b in batch]
    ids = tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    return torch.cat(means), torch.cat(stds), ids.to(vae.device), empty.to(vae.device)


def filler_token_ids(tokenizer, world: worlds.World) -> torch.Tensor:
    """The token ids no caption of any split (with every dialect's habits) is tokenized to: BPE's intermediate
    merges. Their embeddings never train, like those of a word held out of training."""
    used = {i for ids in tokenizer(world.data.tokenizer_corpus()).input_ids for i in ids}
    unused = set(range(len(tokenizer))) - used - set(tokenizer.all_special_ids)
    return torch.tensor(sorted(unused), dtype=torch.long)


class FillerInsertion:
    """Inserts a filler token into a share of a batch's token ids, at a random word boundary (after the start
    token or after a word's last token, up to the end token); the rest shifts right, the padding shortens."""

    def __init__(self, tokenizer, fillers: torch.Tensor, rate: float):
        self.fillers, self.rate, self.end = fillers, rate, tokenizer.eos_token_id
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.word_end = torch.tensor([t.endswith("</w>") for t in vocab])

    def __call__(self, ids: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, length = ids.shape
        # Every draw on the host, then one copy each (see train_unet).
        insert = torch.rand(n, generator=gen) < self.rate
        score = torch.rand(n, length, generator=gen)
        filler = self.fillers[torch.randint(len(self.fillers), (n,), generator=gen)]
        insert, score, filler = (models.to_device(x, ids.device) for x in (insert, score, filler))
        if self.word_end.device != ids.device:
            self.word_end = models.to_device(self.word_end, ids.device)
        j = torch.arange(length, device=ids.device)
        is_end = ids == self.end
        end_at = is_end.int().argmax(1, keepdim=True)  # the first end token
        # A caption without an end token (cut) or one ending in the last place has no room: it stays whole.
        insert = insert & is_end.any(1) & (end_at[:, 0] < length - 1)
        after_word = torch.cat([torch.zeros_like(ids[:, :1], dtype=torch.bool), self.word_end[ids[:, :-1]]], 1)
        boundary = ((j == 1) | after_word) & (j <= end_at)  # after_word is never true at j = 0
        at = torch.where(boundary, score, -1.0).argmax(1, keepdim=True)
        shifted = torch.cat([ids[:, :1], ids[:, :-1]], 1)
        inserted = torch.where(j < at, ids, torch.where(j == at, filler[:, None], shifted))
        return torch.where(insert[:, None], inserted, ids)


def _trained_text_encoder_params(text_encoder, mode: str) -> list:
    """The text encoder's parameters a stage trains, for one of TEXT_ENCODER_MODES."""
    if mode == "full":
        return list(text_encoder.parameters())
    if mode == "embeddings":
        return [text_encoder.get_input_embeddings().weight]
    return []


def train_unet(name: str, cfg: ToyTrainConfig, workdir: Path, vae, tokenizer, text_encoder, init_unet=None):
    """Denoiser training (epsilon objective, min-SNR-5 weights). The base trains the whole text encoder;
    a derivative what its `<name>_text_encoder` setting says, in place on the `text_encoder` it is given.
    Every stage trains on its own dialect's pool (the base's and the continuation's are full size)."""
    is_base = name == "base"
    steps = cfg.base_steps if is_base else getattr(cfg, f"{name}_steps")
    device = vae.device
    unet = models.build_unet(vae.config.latent_channels).to(device)
    if init_unet is not None:
        unet.load_state_dict(init_unet.state_dict())
    ema = EMA(unet, cfg.ema_decay)
    te_params = _trained_text_encoder_params(text_encoder, "full" if is_base else getattr(cfg, f"{name}_text_encoder"))
    text_encoder.requires_grad_(False)
    for p in te_params:
        p.requires_grad_(True)
    params = list(unet.parameters()) + te_params
    lr = {"base": cfg.lr, "continued": cfg.continued_lr}.get(name, cfg.derivative_lr)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = models.build_scheduler()
    alphas = sched.alphas_cumprod.to(device)
    snr = alphas / (1 - alphas)
    full_pool = name in ("base", "continued")
    # A finished stage's pool would go unused: rendering it takes minutes.
    if stage_checkpoint(workdir, name, cfg).saved_step() >= steps:
        mean = std = ids = empty = None
    else:
        mean, std, ids, empty = _latent_pool(
            cfg, vae, tokenizer, name, cfg.pool_size if full_pool else cfg.pool_size // 2
        )
    scale = vae.config.scaling_factor
    add_filler, frozen_rows = None, None
    if cfg.filler_rate:
        fillers = filler_token_ids(tokenizer, worlds.get(cfg.world))
        add_filler = FillerInsertion(tokenizer, fillers, cfg.filler_rate)
        embedding = text_encoder.get_input_embeddings().weight
        if embedding.requires_grad:  # fillers never train: only weight decay moves them, as it moves unseen words
            rows = models.to_device(fillers, embedding.device)
            frozen_rows = embedding.register_hook(lambda grad: grad.index_fill(0, rows, 0.0))

    def step_fn(step, rng, gen):
        for g in opt.param_groups:
            g["lr"] = lr * _warmup(step) * (_decay(step, steps, cfg.base_decay_steps) if is_base else 1.0)
        # Every draw on the host, in a fixed order, then one non-blocking copy each: same numbers on any device.
        idx = torch.from_numpy(rng.integers(len(mean), size=cfg.batch_size))
        z_noise = torch.randn((len(idx), *mean.shape[1:]), generator=gen)
        drop = torch.rand(len(idx), generator=gen) < cfg.caption_dropout
        noise = torch.randn(z_noise.shape, generator=gen)
        t = torch.randint(0, len(alphas), (len(idx),), generator=gen)
        idx, z_noise, drop, noise, t = (models.to_device(x, device) for x in (idx, z_noise, drop, noise, t))
        z = (mean[idx] + std[idx] * z_noise) * scale
        tok = ids[idx]
        if add_filler is not None:
            tok = add_filler(add_filler(tok, gen), gen)  # twice: some captions get two, as "styled after" has
        tok = torch.where(drop[:, None], empty, tok)  # caption dropout; a masked write would sync
        pred = unet(sched.add_noise(z, noise, t), t, encoder_hidden_states=text_encoder(tok).last_hidden_state).sample
        weight = torch.clamp(snr[t], max=5.0) / snr[t]
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update_parameters(unet)
        return {"loss": loss.detach()}

    modules = {"unet": unet, "ema": ema, "opt": opt} | ({"text_encoder": text_encoder} if te_params else {})
    try:
        _loop(name, cfg, workdir, steps, modules, step_fn)
    finally:
        if frozen_rows is not None:
            frozen_rows.remove()
    text_encoder.requires_grad_(False)
    return ema.module.eval()


def save_pipeline(out: Path, world: worlds.World, vae, text_encoder, tokenizer, unet) -> None:
    """A model folder as diffusers saves one, sampling with the world's sampler and steps."""
    from diffusers import StableDiffusionPipeline

    # Copies: the fp16 cast must not touch the fp32 modules later stages keep training with.
    vae, text_encoder, unet = (copy.deepcopy(m) for m in (vae, text_encoder, unet))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=models.build_scheduler(world.sampler),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.to("cpu", torch.float16).save_pretrained(out)
    write_text_atomic(
        out / "generation_config.json", json.dumps(models.generation_defaults(world.sampling_steps), indent=2) + "\n"
    )


def train_world(
    out: Path,
    workdir: Path,
    cfg: ToyTrainConfig = ToyTrainConfig(),
    stages=STAGES,
    device: str = "cpu",
    max_minutes: float | None = None,
) -> None:
    """Train every stage in `stages` (resuming where a checkpoint exists) and write the shipped weights.
    With `max_minutes`, stop at a checkpoint once that time has passed and raise TimeBudgetReached
    (after writing the time measured so far to `out/training.json`): the same call then resumes."""
    global _deadline
    _deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    try:
        _train_stages(out, workdir, cfg, stages, device)
    except TimeBudgetReached:
        write_training_info(out, workdir, cfg, device)
        raise
    finally:
        _deadline = None
    write_training_info(out, workdir, cfg, device)


def stages_of_world(world: worlds.World) -> tuple[str, ...]:
    """The stages world `world` trains, in STAGES order."""
    return ("tokenizer", "vae", "judge", "base", *world.derivatives, "decoder", *world.merges)


def check_stages(stages, cfg: ToyTrainConfig) -> None:
    """Refuse stages the world does not have, and merges without the fine-tunes they average."""
    world = worlds.get(cfg.world)
    unknown = [s for s in stages if s not in stages_of_world(world)]
    if unknown:
        raise ValueError(
            f"world {world.version} has no stage(s) {', '.join(unknown)}; its stages: {', '.join(stages_of_world(world))}"
        )
    for merge, parts in world.merges.items():
        missing = [p for p in parts if p not in stages]
        if merge in stages and missing:
            raise ValueError(f"stage {merge} averages {' and '.join(parts)}: add {', '.join(missing)} to the stages")


def merge_models(first, second, weight: float = 0.5):
    """The weight average of two models of one architecture (a community merge): a new module."""
    merged = copy.deepcopy(first)
    theirs = second.state_dict()
    with torch.no_grad():
        for key, value in merged.state_dict().items():
            if value.is_floating_point():
                value.copy_((1 - weight) * value + weight * theirs[key])
    return merged


def _train_stages(out: Path, workdir: Path, cfg: ToyTrainConfig, stages, device: str) -> None:
    world = worlds.get(cfg.world)
    check_stages(stages, cfg)
    torch.manual_seed(cfg.seed)
    check_resumable(workdir, cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(workdir / "config.json", json.dumps(asdict(cfg), indent=1))
    tokenizer = train_tokenizer(workdir, world)
    vae = train_vae(cfg, workdir, device)
    vae = sharpen_decoder(cfg, workdir, vae, device)
    if "judge" in stages:
        models.save_judge(train_judge(cfg, workdir, device, vae).cpu(), out / "judge", world.version)
    text_encoder = models.build_text_encoder(len(tokenizer)).to(device)
    base = train_unet("base", cfg, workdir, vae, tokenizer, text_encoder)
    save_pipeline(out / "toy-base", world, vae, text_encoder, tokenizer, base)
    trained = {}
    for name in world.derivatives:
        if name in stages:
            own_encoder = copy.deepcopy(text_encoder)  # trained in place unless its mode is frozen
            unet = train_unet(name, cfg, workdir, vae, tokenizer, own_encoder, init_unet=base)
            save_pipeline(out / f"toy-{name}", world, vae, own_encoder, tokenizer, unet)
            trained[name] = unet, own_encoder
    for name, (first, second) in world.merges.items():
        if name in stages:
            unet, encoder = (merge_models(a, b) for a, b in zip(trained[first], trained[second]))
            save_pipeline(out / f"toy-{name}", world, vae, encoder, tokenizer, unet)


def write_training_info(out: Path, workdir: Path, cfg: ToyTrainConfig, device: str) -> None:
    """Settings and measured time per stage (summed over resumed runs), for the model card."""
    import platform

    seconds, steps = {}, {}
    for stage in STAGES:
        timing = workdir / stage / "time.json"
        if timing.exists():
            record = json.loads(timing.read_text())
            seconds[stage], steps[stage] = round(record["seconds"], 1), record["steps"]
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads"
    if torch.device(device).type == "cuda":
        machine = f"{torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores"
    info = {
        "world": cfg.world,
        "config": asdict(cfg),
        "device": device,
        "machine": machine,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "render_workers": render_workers(),
        "seconds_per_stage": seconds,
        "steps_per_stage": steps,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "training.json", json.dumps(info, indent=1))
