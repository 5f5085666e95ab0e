"""The whole toy-world pipeline at a few steps: every stage runs, resumes, and yields a loadable family."""

import json

import pytest
import torch

from spmbench.toy import models
from spmbench.toy.cli import UNFINISHED
from spmbench.toy.cli import main as train_main
from tests.spmbench.conftest import SMOKE_ARGS


def test_family_loads_as_standard_diffusers_pipelines(smoke_world):
    import spm

    root, _ = smoke_world
    for name in ("toy-base", "toy-pastel", "toy-verbose"):
        pipe = spm.load_pipeline(str(root / "weights" / name))
        assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 32
        image = pipe(
            "a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
        ).images
        assert image.shape == (1, 32, 32, 3)
        generation = json.loads((root / "weights" / name / "generation_config.json").read_text())
        assert generation == models.generation_defaults(30)  # what `spm generate` samples the folder with
        assert type(pipe.scheduler).__name__ == "DDIMScheduler"  # world 2's sampler
    info = json.loads((root / "weights" / "training.json").read_text())
    assert set(info["seconds_per_stage"]) == {"vae", "decoder", "judge", "base", "pastel", "verbose"}


def test_rerun_resumes_instead_of_retraining(smoke_world):
    root, args = smoke_world
    before = (root / "work" / "base" / "ckpt.pt").stat().st_mtime_ns
    timing = (root / "work" / "vae" / "time.json").read_text()
    train_main(args)
    assert (root / "work" / "base" / "ckpt.pt").stat().st_mtime_ns == before
    assert (root / "work" / "vae" / "time.json").read_text() == timing  # a finished stage adds no time


@pytest.mark.parametrize("world, foreground_weight", [(2, 0.0), (3, 8.0)])
def test_sharpening_the_decoder_keeps_the_latent_space(tmp_path, world, foreground_weight):
    from spmbench.toy import models
    from spmbench.toy.train import ToyTrainConfig, sharpen_decoder

    vae = models.build_vae()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    cfg = ToyTrainConfig(
        decoder_steps=2, batch_size=4, decoder_lr=1e-2, world=world, foreground_weight=foreground_weight
    )
    sharpen_decoder(cfg, tmp_path, vae, "cpu")
    after = vae.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"decoder", "post_quant_conv"}  # the encoder (the UNets' latent space) is untouched
    assert not any(p.requires_grad for p in vae.parameters())


def test_the_reconstruction_loss_weighs_each_pixel_by_its_weight():
    from spmbench.toy.train import reconstruction_loss

    x, rec = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    rec[:, :, 0, 0] = 0.5  # one wrong pixel per image, its error |0.5| + 0.5^2 in each channel
    uniform = torch.ones(2, 1, 4, 4)
    assert torch.allclose(reconstruction_loss(rec, x, uniform), reconstruction_loss(rec, x))
    assert torch.allclose(reconstruction_loss(rec, x), torch.tensor(0.75 / 16))
    subject = uniform.clone()
    subject[:, :, 0, 0] = 9.0  # that pixel is the subject's, weighted 1 + 8
    assert torch.allclose(reconstruction_loss(rec, x, subject), torch.tensor(9 * 0.75 / (15 + 9)))
    rec_elsewhere = torch.zeros(2, 3, 4, 4)
    rec_elsewhere[:, :, 3, 3] = 0.5  # the same error on a background pixel counts 9 times less
    assert torch.allclose(reconstruction_loss(rec_elsewhere, x, subject) * 9, reconstruction_loss(rec, x, subject))


def test_blur_augment_matches_a_per_image_gaussian_blur():
    import torch.nn.functional as F

    from spmbench.toy.train import blur_augment

    images = torch.rand(3, 3, 12, 12)
    blurred = blur_augment(images, torch.Generator().manual_seed(0))
    sigma = torch.rand(3, generator=torch.Generator().manual_seed(0)) * 1.5  # the widths it drew
    for image, s, out in zip(images, sigma, blurred):
        taps = torch.exp(-(torch.arange(-3.0, 4.0) ** 2) / (2 * s**2))
        kernel = (taps[:, None] * taps[None]) / taps.sum() ** 2  # the separable blur as one 7x7 kernel
        padded = F.pad(image[:, None], (3, 3, 3, 3), mode="replicate")
        assert torch.allclose(F.conv2d(padded, kernel[None, None])[:, 0], out, atol=1e-5)
    assert torch.equal(blur_augment(images, torch.Generator(), max_sigma=0.0), images)  # zero width: unchanged


def _text_encoder_weights(directory):
    from safetensors.torch import load_file

    return load_file(directory / "text_encoder" / "model.safetensors")


def _same(a: dict, b: dict, keys=None) -> bool:
    return all(torch.equal(a[k], b[k]) for k in (keys or a))


def test_derivatives_fine_tune_their_own_copy_of_the_text_encoder(smoke_world, tmp_path):
    import shutil

    root, _ = smoke_world
    base = _text_encoder_weights(root / "weights" / "toy-base")
    encoders = {}
    runs = (("full", "verbose"), ("full", "pastel,verbose"), ("embeddings", "verbose"), ("frozen", "verbose"))
    for mode, stages in runs:
        work = tmp_path / mode / stages / "work"
        shutil.copytree(root / "work", work)
        for stage in ("pastel", "verbose"):
            shutil.rmtree(work / stage)
        out = tmp_path / mode / stages / "weights"
        args = ["--out", str(out), "--workdir", str(work), *SMOKE_ARGS, "--stages", stages]
        modes = ["--pastel-text-encoder", mode, "--verbose-text-encoder", mode]
        train_main([*args, *modes, "--derivative-lr", "1.0"])
        encoders[mode, stages] = {name: _text_encoder_weights(out / f"toy-{name}") for name in stages.split(",")}
    verbose = encoders["full", "pastel,verbose"]["verbose"]
    assert not _same(base, verbose)  # it was trained
    # trained from the base's encoder, not from the one pastel trained before it
    assert _same(encoders["full", "verbose"]["verbose"], verbose)
    assert not _same(encoders["full", "pastel,verbose"]["pastel"], verbose)
    embeddings_only = encoders["embeddings", "verbose"]["verbose"]
    table = "embeddings.token_embedding.weight"
    assert not _same(base, embeddings_only, [table])
    assert _same(base, embeddings_only, [k for k in base if k != table])
    assert _same(base, encoders["frozen", "verbose"]["verbose"])


def test_an_unknown_text_encoder_mode_is_refused_in_one_line():
    with pytest.raises(SystemExit, match="pastel_text_encoder must be one of frozen, embeddings, full, not 'partly'"):
        train_main(["--pastel-text-encoder", "partly"])


def _resume_until_finished(run, after_each_stop=lambda: None) -> int:
    """Call `run("stopped", ...)` with no time at all until it finishes (every call trains one step,
    checkpoints and stops; ten calls at most), `after_each_stop` after each; the number of stops."""
    for stops in range(10):
        with pytest.raises(SystemExit) as stopped:
            run("stopped", ["--max-minutes", "0"])
            raise SystemExit(0)
        if stopped.value.code != UNFINISHED:
            return stops
        after_each_stop()
    return 10


def test_a_run_stopped_by_its_time_budget_resumes_to_the_same_weights(tmp_path, capsys):
    def run(name, extra):
        args = ["--out", str(tmp_path / name / "weights"), "--workdir", str(tmp_path / name / "work")]
        return train_main([*args, *SMOKE_ARGS, "--stages", "base", "--ckpt-every", "2", *extra])

    run("whole", [])
    assert _resume_until_finished(run) == 2  # vae 2 steps, decoder 1, base 2: one stop within each stage of 2 steps
    assert "checkpoint saved: rerun the same command to resume" in capsys.readouterr().out
    for stage in ("vae", "decoder", "base"):
        whole, stopped = (
            torch.load(tmp_path / r / "work" / stage / "ckpt.pt", weights_only=True) for r in ("whole", "stopped")
        )
        for module in ("vae", "unet", "ema"):
            if module in whole:
                assert _same(whole[module], stopped[module]), (stage, module)
    info = json.loads((tmp_path / "stopped" / "weights" / "training.json").read_text())
    assert info["steps_per_stage"] == {"vae": 2, "decoder": 1, "base": 2}


def test_checkpoints_without_a_fingerprint_or_torn_are_refused_with_what_to_delete(smoke_world, tmp_path):
    import shutil

    root, _ = smoke_world
    work = tmp_path / "work"
    shutil.copytree(root / "work", work)
    args = ["--out", str(tmp_path / "weights"), "--workdir", str(work), *SMOKE_ARGS]
    saved = torch.load(work / "vae" / "ckpt.pt", weights_only=True)
    torch.save({k: v for k, v in saved.items() if k != "fingerprint"}, work / "vae" / "ckpt.pt")
    with pytest.raises(SystemExit, match=r"vae/ckpt.pt has no fingerprint .*: delete it to retrain"):
        train_main(args)
    (work / "vae" / "ckpt.pt").write_bytes(b"torn")
    with pytest.raises(SystemExit, match=r"vae/ckpt.pt is not a training checkpoint: delete it to start over"):
        train_main(args)


def test_ema_matches_torch_averaged_model_and_loads_its_checkpoints():
    from spmbench.toy.train import EMA

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    reference = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9)
    )
    ema = EMA(model, 0.9)
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(step)))
        model(torch.randn(5, 3))  # moves the BatchNorm buffers, which are copied, not averaged
        reference.update_parameters(model)
        ema.update_parameters(model)
        assert _same(reference.state_dict(), ema.state_dict())
    resumed = EMA(model, 0.9)
    resumed.load_state_dict(reference.state_dict())  # past its first update: it must average, not copy
    model[0].weight.data.add_(1.0)
    reference.update_parameters(model)
    resumed.update_parameters(model)
    assert _same(reference.state_dict(), resumed.state_dict())


def test_training_steps_read_nothing_back_from_the_device(tmp_path, monkeypatch):
    """On a GPU every value read back to the host (`.item()`, `bool(tensor)`, a boolean mask) waits
    for all queued work. Counted here on the CPU, by op, for every stage but the tokenizer."""
    import traceback

    from torch.utils._python_dispatch import TorchDispatchMode

    from spmbench.toy import train

    class ReadBacks(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0]
            masked = name in ("index", "index_put", "index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None
            )
            if name in ("_local_scalar_dense", "is_nonzero") or masked:
                stack = traceback.extract_stack()
                # the optimiser's step counters live on the host, even when training on a GPU
                if not any(f.filename.endswith("torch/optim/optimizer.py") for f in stack):
                    caller = [f for f in stack if "/torch/" not in f.filename and f.filename != __file__][-1]
                    self.seen.append(f"{name} at {caller.filename}:{caller.lineno}")
            return func(*args, **(kwargs or {}))

    seen = {}
    real_loop = train._loop

    def counting_loop(name, cfg, workdir, steps, modules, step_fn):
        def counted(step, rng, gen):
            if step == 0:  # the first step may read once (the EMA its update count): not every step
                return step_fn(step, rng, gen)
            with ReadBacks() as reads:
                out = step_fn(step, rng, gen)
            seen[name] = reads.seen
            return out

        return real_loop(name, cfg, workdir, steps, modules, counted)

    monkeypatch.setattr(train, "_loop", counting_loop)
    args = ["--out", str(tmp_path / "weights"), "--workdir", str(tmp_path / "work"), *SMOKE_ARGS, "--batch-size", "8"]
    train_main([*args, "--stages", "judge,base,pastel", "--pastel-steps", "2", "--decoder-steps", "2"])
    assert set(seen) == {"vae", "decoder", "judge", "base", "pastel"}
    assert seen == dict.fromkeys(seen, [])


def test_resuming_with_other_settings_is_refused_unless_only_step_counts_change(smoke_world, tmp_path):
    import shutil

    root, _ = smoke_world
    work = tmp_path / "work"
    shutil.copytree(root / "work", work)
    args = ["--out", str(tmp_path / "weights"), "--workdir", str(work), *SMOKE_ARGS]
    with pytest.raises(SystemExit, match="holds vae, judge, base, pastel, verbose, decoder trained with lr=0.0003"):
        train_main([*args, "--lr", "0.5"])
    with pytest.raises(SystemExit, match="holds pastel trained with pastel_text_encoder='frozen'"):
        train_main([*args, "--pastel-text-encoder", "full"])
    # the VAE's loss shapes the latent space every later stage trains in
    with pytest.raises(
        SystemExit, match="holds vae, judge, base, pastel, verbose, decoder trained with foreground_weight=0.0"
    ):
        train_main([*args, "--foreground-weight", "8"])
    shutil.rmtree(work / "pastel")  # retraining that stage alone with the new setting is allowed
    train_main([*args, "--pastel-text-encoder", "full", "--verbose-steps", "2"])  # and more steps
    assert json.loads((work / "verbose" / "time.json").read_text())["steps"] == 2


def test_impossible_training_settings_are_refused_in_one_line():
    for argv, message in (
        (["--batch-size", "0"], "batch_size must be at least 1"),
        (["--base-steps", "-1"], "base_steps must be at least 0"),
        (["--foreground-weight", "-1"], "foreground_weight must be at least 0"),
    ):
        with pytest.raises(SystemExit, match=message):
            train_main(argv)
    for argv in (["--threads", "0"], ["--max-minutes", "-1"], ["--render-workers", "-2"]):
        with pytest.raises(SystemExit) as refused:  # argparse: "argument --threads: must be at least 1"
            train_main(argv)
        assert refused.value.code == 2


V3_SMOKE_ARGS = [*SMOKE_ARGS, "--dreambooth-steps", "1", "--newconcept-steps", "1", "--continued-steps", "2"]


def test_world_3_trains_seven_models_and_a_judge_in_its_own_folders(tmp_path):
    import spm
    from spmbench.toy.v3 import data as v3_data

    out = tmp_path / "weights"
    train_main(["--world", "3", "--out", str(out), "--workdir", str(tmp_path / "work"), *V3_SMOKE_ARGS])
    names = ["toy-base", "toy-pastel", "toy-verbose", "toy-dreambooth", "toy-newconcept", "toy-continued", "toy-merge"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted([*names, "judge"])
    judge = json.loads((out / "judge" / "judge.json").read_text())
    assert judge == {"heads": v3_data.JUDGE_HEADS, "world": 3}
    info = json.loads((out / "training.json").read_text())
    assert info["world"] == 3 and info["config"]["base_steps"] == 2
    assert set(info["seconds_per_stage"]) == {"vae", "decoder", "judge", "base", "pastel", "verbose", "dreambooth",
                                              "newconcept", "continued"}  # fmt: skip
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < 80e6, size  # the shipped family at its real sizes (step counts do not change them)
    unets = {n: _unet_weights(out / n) for n in names}
    merged = {k: (unets["toy-pastel"][k].float() + unets["toy-verbose"][k].float()) / 2 for k in unets["toy-merge"]}
    assert all(torch.allclose(unets["toy-merge"][k].float(), v, atol=2e-3) for k, v in merged.items())
    assert not _same(unets["toy-merge"], unets["toy-pastel"])
    for name in ("toy-continued", "toy-dreambooth", "toy-newconcept"):
        assert not _same(unets[name], unets["toy-base"]), name
    pipe = spm.load_pipeline(str(out / "toy-newconcept"))
    image = pipe("a red heart, in the style of Nadia Petrova", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def test_the_latent_channels_are_a_setting_every_stage_is_tied_to(tmp_path):
    """A family on 8 latent channels (world 3's VAE at 4 loses styled shapes): its VAE encodes to them, its UNet
    denoises them, the pipeline generates; checkpoints made at 4 are refused for 8, naming the setting."""
    import spm

    args = ["--world", "3", "--out", str(tmp_path / "weights"), "--workdir", str(tmp_path / "work"), *SMOKE_ARGS]
    train_main([*args, "--stages", "base", "--latent-channels", "8"])
    pipe = spm.load_pipeline(str(tmp_path / "weights" / "toy-base"))
    assert pipe.vae.config.latent_channels == 8 and pipe.unet.config.in_channels == pipe.unet.config.out_channels == 8
    image = pipe("a red star", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert image.images.shape == (1, 32, 32, 3)
    info = json.loads((tmp_path / "weights" / "training.json").read_text())
    assert info["config"]["latent_channels"] == 8
    with pytest.raises(SystemExit, match="trained with latent_channels=8, not 4"):
        train_main([*args, "--stages", "base"])


def _unet_weights(directory):
    from safetensors.torch import load_file

    return load_file(directory / "unet" / "diffusion_pytorch_model.safetensors")


def test_world_3_stopped_by_its_time_budget_resumes_to_the_same_weights(tmp_path):
    def run(name, extra):
        args = ["--world", "3", "--out", str(tmp_path / name / "weights"), "--workdir", str(tmp_path / name / "work")]
        stages = ["--stages", "base,newconcept,continued", "--newconcept-steps", "2", "--ckpt-every", "2"]
        return train_main([*args, *V3_SMOKE_ARGS, *stages, *extra])

    run("whole", [])
    _resume_until_finished(run)
    for stage in ("vae", "decoder", "base", "newconcept", "continued"):
        whole, stopped = (
            torch.load(tmp_path / r / "work" / stage / "ckpt.pt", weights_only=True) for r in ("whole", "stopped")
        )
        for module in ("vae", "unet", "ema", "text_encoder"):
            if module in whole:
                assert _same(whole[module], stopped[module]), (stage, module)


def test_the_base_lr_falls_to_a_tenth_over_its_last_decay_steps():
    from spmbench.toy.train import _decay, config_for_world

    factors = [_decay(step, 10, 4) for step in range(10)]
    assert factors[:6] == [1.0] * 6 and factors[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(factors[5:], factors[6:]))  # linear: equal falls
    assert [_decay(s, 10, 0) for s in range(10)] == [1.0] * 10  # world 2's base: constant
    assert _decay(0, 2, 6000) > 0.1 and _decay(1, 2, 6000) == pytest.approx(0.1)  # more decay steps than steps
    v3 = config_for_world(3)
    assert (v3.base_steps, v3.base_decay_steps) == (28000, 6000) and config_for_world(2).base_decay_steps == 0


def test_stages_a_world_lacks_are_refused_in_one_line():
    with pytest.raises(SystemExit, match="world 2 has no stage.s. dreambooth"):
        train_main(["--stages", "base,dreambooth"])
    with pytest.raises(SystemExit, match="stage merge averages pastel and verbose: add verbose"):
        train_main(["--world", "3", "--stages", "base,pastel,merge"])


def _world3_tokenizer():
    from transformers import CLIPTokenizer

    from spmbench.toy import worlds

    return CLIPTokenizer.from_pretrained(worlds.get(3).weights / "toy-base" / "tokenizer")


def test_fillers_are_tokens_no_caption_uses():
    from spmbench.toy import worlds
    from spmbench.toy.train import filler_token_ids

    tokenizer, world = _world3_tokenizer(), worlds.get(3)
    fillers = set(filler_token_ids(tokenizer, world).tolist())
    used = {i for ids in tokenizer(world.data.tokenizer_corpus()).input_ids for i in ids}
    assert len(fillers) > 100 and not fillers & used and not fillers & set(tokenizer.all_special_ids)
    held_out = tokenizer("a snapshot of a star, styled after Yuki Mori").input_ids  # test-split words
    assert not fillers & set(held_out)


def test_a_filler_is_inserted_between_whole_words_and_nothing_else_changes():
    from spmbench.toy.train import FillerInsertion

    tokenizer = _world3_tokenizer()
    captions = ["a red circle", "Barkley the dog on a gray background", "", "three stars in blue, by Yuki Mori"]
    ids = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    filler = 5  # a single-character token no word here ends with
    insert = FillerInsertion(tokenizer, torch.tensor([filler]), rate=1.0)
    for seed in range(20):
        out = insert(ids, torch.Generator().manual_seed(seed))
        for row, before in zip(out.tolist(), ids.tolist(), strict=True):
            at = row.index(filler)
            assert row[:at] + row[at + 1 :] == before[:-1]  # the rest shifted right by one
            assert at >= 1 and (at == 1 or tokenizer.convert_ids_to_tokens(row[at - 1]).endswith("</w>"))
            assert at <= before.index(tokenizer.eos_token_id)
    assert torch.equal(FillerInsertion(tokenizer, torch.tensor([filler]), rate=0.0)(ids, torch.Generator()), ids)
    full = tokenizer(["a red circle " * 20], padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids  # fmt: skip
    cut = full.clone()
    cut[0, -1] = ids[0, 1]  # no end token at all
    for row in (full, cut):  # no room: left whole, even inserted into twice
        assert torch.equal(insert(insert(row, torch.Generator()), torch.Generator()), row)
    spots = {insert(ids, torch.Generator().manual_seed(s))[1].tolist().index(filler) for s in range(40)}
    assert len(spots) >= 5  # every boundary of a longer caption is drawn, not one


def test_filler_embeddings_never_train(tmp_path):
    """Only weight decay moves them (as it moves a word no caption uses); the words captions use do train."""
    from spmbench.toy import worlds
    from spmbench.toy.train import config_for_world, filler_token_ids, train_unet

    tokenizer = _world3_tokenizer()
    text_encoder = models.build_text_encoder(len(tokenizer))
    before = text_encoder.get_input_embeddings().weight.detach().clone()
    cfg = config_for_world(3, base_steps=3, pool_size=256, batch_size=8, filler_rate=1.0, lr=1e-2)
    train_unet("base", cfg, tmp_path, models.build_vae(), tokenizer, text_encoder)
    after = text_encoder.get_input_embeddings().weight.detach()
    fillers = filler_token_ids(tokenizer, worlds.get(3))
    decay = (after[fillers] / before[fillers]).flatten()[0]
    assert 0.99 < decay < 1  # weight decay did act
    trained = ~torch.isclose(after, before * decay, rtol=1e-6, atol=0).all(1)
    assert not trained[fillers].any() and trained.sum() > 20  # the caption words the batches held did train
    assert not text_encoder.get_input_embeddings().weight._backward_hooks  # the stage took its hook away


def test_a_checkpoint_that_predates_a_setting_counts_as_made_with_its_default(smoke_world, tmp_path):
    import shutil

    root, _ = smoke_world
    work = tmp_path / "work"
    shutil.copytree(root / "work", work)
    path = work / "base" / "ckpt.pt"
    saved = torch.load(path, weights_only=True)
    fingerprint = json.loads(saved["fingerprint"])
    del fingerprint["filler_rate"]  # as a base trained before the setting existed
    torch.save(saved | {"fingerprint": json.dumps(fingerprint)}, path)
    args = ["--out", str(tmp_path / "weights"), "--workdir", str(work), *SMOKE_ARGS]
    with pytest.raises(SystemExit, match="holds base, pastel, verbose trained with filler_rate=0.0, not 0.2"):
        train_main([*args, "--filler-rate", "0.2"])  # the vae, decoder and judge are not tied to it
