import pytest
import torch

import spm
from spm.checkpoint import read_checkpoint


STEPS = 10


def setup(seed: int = 0):
    """A small real training loop's state: parameters, AdamW, a warm-up schedule, a generator."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 4))
    gen = torch.Generator().manual_seed(seed)
    return model, {"params": params, "opt": opt, "sched": sched, "gen": gen}


def run(path, settings, every: int = 3, stop_at: int | None = None):
    """Fit y = x @ w on random batches; returns (weights, losses). Stops after `stop_at` steps like a kill."""
    model, state = setup()
    checkpoint = spm.Checkpoint(path, settings, every)
    start, extra = checkpoint.resume(state)
    losses = list(extra.get("losses", []))
    for step in range(start, STEPS):
        if step == stop_at:
            raise KeyboardInterrupt
        x = torch.randn(8, 4, generator=state["gen"])
        loss = (model(x).squeeze(1) - x @ torch.tensor([1.0, -2.0, 0.5, 3.0])).pow(2).mean()
        state["opt"].zero_grad()
        loss.backward()
        state["opt"].step()
        state["sched"].step()
        losses.append(loss.item())
        if checkpoint.due(step + 1):
            checkpoint.save(step + 1, state, losses=losses)
    return [p.detach().clone() for p in model.parameters()], losses


def test_a_resumed_loop_ends_exactly_where_an_uninterrupted_one_does(tmp_path):
    settings = {"lr": 0.05, "targets": ["snoopy"]}
    weights, losses = run(None, settings)
    path = tmp_path / "run.ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        run(path, settings, stop_at=7)  # killed after step 7: the step-6 checkpoint survives
    assert read_checkpoint(path)["step"] == 6
    resumed, resumed_losses = run(path, settings)
    assert resumed_losses == losses
    assert all(torch.equal(a, b) for a, b in zip(resumed, weights))


def test_without_the_saved_state_a_resumed_loop_would_differ(tmp_path):
    """The check above can fail: restarting the generator alone (not resuming) gives other weights."""
    weights, _ = run(None, {})
    path = tmp_path / "run.ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        run(path, {}, stop_at=7)
    saved = torch.load(path, weights_only=True)
    saved["gen"] = torch.Generator().manual_seed(0).get_state()
    torch.save(saved, path)
    resumed, _ = run(path, {})
    assert not all(torch.equal(a, b) for a, b in zip(resumed, weights))


def test_a_checkpoint_from_other_settings_is_refused_in_one_line(tmp_path):
    path = tmp_path / "run.ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        run(path, {"lr": 0.05}, stop_at=4)
    with pytest.raises(spm.CheckpointError, match="from other settings or targets: delete it to start over") as e:
        run(path, {"lr": 0.01})
    assert "\n" not in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("content", [b"not a checkpoint", b""])
def test_a_file_that_is_not_a_checkpoint_is_refused_in_one_line(tmp_path, content):
    path = tmp_path / "run.ckpt.pt"
    path.write_bytes(content)
    with pytest.raises(spm.CheckpointError, match="is not a training checkpoint: delete it to start over") as e:
        run(path, {})
    assert "\n" not in str(e.value)


def test_a_torch_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(spm.CheckpointError, match="not a training checkpoint"):
        spm.Checkpoint(path, {}).read()


def test_a_missing_state_is_refused_unless_optional(tmp_path):
    path = tmp_path / "run.ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        run(path, {}, stop_at=4)
    checkpoint = spm.Checkpoint(path, {}, 3)
    checkpoint.drop("opt")  # a finished run keeps its weights only
    assert "opt" not in read_checkpoint(path) and "params" in read_checkpoint(path)
    _, state = setup()
    with pytest.raises(spm.CheckpointError, match="has no 'opt'"):
        checkpoint.resume(state)
    fresh = state["opt"].state_dict()
    assert checkpoint.resume(state, optional=("opt",))[0] == 3
    assert state["opt"].state_dict() == fresh


def test_no_path_no_file_and_the_interval(tmp_path):
    off = spm.Checkpoint(None, {}, 2)
    assert off.resume({}) == (0, {}) and not off.due(2)
    off.save(2, {})  # nothing to write to: a no-op
    absent = spm.Checkpoint(tmp_path / "none.pt", {}, 2)
    assert absent.resume({}) == (0, {}) and absent.saved_step() == 0
    assert [absent.due(s) for s in range(1, 5)] == [False, True, False, True]
    assert not spm.Checkpoint(tmp_path / "x.pt", {}, 0).due(4)
    with pytest.raises(ValueError, match="at least 0"):
        spm.Checkpoint(tmp_path / "x.pt", {}, -1)


def test_extra_values_must_not_shadow_the_state(tmp_path):
    _, state = setup()
    with pytest.raises(ValueError, match="clash"):
        spm.Checkpoint(tmp_path / "x.pt", {}, 1).save(1, state, opt=1)
    with pytest.raises(ValueError, match="clash"):
        spm.Checkpoint(tmp_path / "x.pt", {}, 1).save(1, state, fingerprint="x")


def test_a_state_of_another_size_is_refused(tmp_path):
    path = tmp_path / "run.ckpt.pt"
    checkpoint = spm.Checkpoint(path, {}, 1)
    checkpoint.save(1, {"params": [torch.zeros(2), torch.zeros(3)]})
    with pytest.raises(spm.CheckpointError, match="holds 2 tensors, not 1"):
        checkpoint.resume({"params": [torch.zeros(2)]})


def test_fingerprints_are_json_and_stable():
    from spm.checkpoint import fingerprint

    assert fingerprint({"a": (1, 2), "b": "x"}) == '{"a": [1, 2], "b": "x"}'
    assert fingerprint([object.__name__]) == fingerprint(["object"])
