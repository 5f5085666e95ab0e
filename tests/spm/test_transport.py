import numpy as np
import pytest
import torch

from spm import Transport


def reference_gamma(pipe, prompt, targets, relative=False):
    """An independent computation of the spec's formula, in numpy; `relative` rescales each cosine
    so that the empty prompt's is 0 and the target's own is 1."""
    tok = pipe.tokenizer

    def enc(text):
        ids = tok([text], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        with torch.no_grad():
            hidden = pipe.text_encoder(ids).last_hidden_state[0].numpy().ravel().astype(np.float64)
        return hidden, {i for i in ids[0].tolist() if i not in tok.all_special_ids}

    def cosine(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    hp, tp = enc(prompt)
    best = 0.0
    for target in targets:
        hc, tc = enc(target)
        cos = cosine(hp, hc)
        if relative:
            floor = cosine(enc("")[0], hc)
            cos = (cos - floor) / (1 - floor)
        best = max(best, cos, len(tp & tc) / len(tc))
    return min(best, 1.0)


@pytest.mark.parametrize(
    "prompt",
    ["snoopy the dog", "a photo of a cat", "mickey the mouse", "a red car on the road", "snoopy", ""],
)
@pytest.mark.parametrize("similarity", ["paper", "relative"])
def test_transport_matches_reference(pipe, prompt, similarity):
    targets = [["snoopy"], ["mickey the mouse", "a red car"]]
    gamma = Transport(targets, pipe, similarity)([prompt])
    for i, t in enumerate(targets):
        want = reference_gamma(pipe, prompt, t, relative=similarity == "relative")
        assert gamma[0, i].item() == pytest.approx(want, abs=1e-5)


def test_known_values(pipe):
    ft = Transport([["snoopy"], ["mickey the mouse"]], pipe)
    gamma = ft(["snoopy the dog", "mickey the mouse", "a photo of a cat"])
    assert gamma[0, 0] == 1.0  # every target token present
    assert gamma[1, 1] == pytest.approx(1.0)  # the target itself
    assert 0 < gamma[2, 0] < 1 and 0 < gamma[2, 1] < 1  # unrelated: partial, never 0 (full-sequence cosine)


def test_relative_similarity_lowers_unrelated_prompts_only(pipe):
    prompts = ["snoopy the dog", "snoopy", "a photo of a cat", ""]
    paper = Transport([["snoopy"]], pipe)(prompts)[:, 0]
    relative = Transport([["snoopy"]], pipe, "relative")(prompts)[:, 0]
    assert relative[:2].tolist() == pytest.approx([1.0, 1.0])  # the target's tokens: full strength
    assert relative[2] < paper[2]
    # The empty prompt shares BOS and padding only; encoded in a batch it may differ from the floor
    # (encoded alone) by float rounding, so 0 up to that.
    assert paper[3] > 0.3 and relative[3] == pytest.approx(0.0, abs=1e-5)


def test_unknown_similarity_is_named(pipe):
    with pytest.raises(ValueError, match="paper, relative"):
        Transport([["snoopy"]], pipe, "pooled")


def test_spm_without_targets_needs_them_for_transport(pipe):
    with pytest.raises(ValueError, match="targets"):
        Transport([[]], pipe)


def test_no_prompts_give_no_rows_and_no_spms_are_an_error(pipe):
    transport = Transport([["snoopy"], ["mickey"]], pipe)
    assert transport([]).shape == (0, 2)
    with pytest.raises(ValueError, match="at least one SPM"):
        Transport([], pipe)


@pytest.mark.parametrize("similarity", ["paper", "relative"])
def test_of_states_is_the_call_from_states_and_differentiable(pipe, similarity):
    """What an adaptive attack optimises: the same gammas as from the prompts, with a gradient in the states."""
    import spm

    transport = Transport([["snoopy"], ["mickey the mouse", "a red car"]], pipe, similarity)
    prompts = ["snoopy the dog", "a photo of a cat", ""]
    states, ids = spm.encode_prompts(pipe, prompts, return_ids=True)
    assert torch.equal(transport.of_states(states, ids), transport(prompts))
    states = states.clone().requires_grad_(True)
    transport.of_states(states[1:2], ids[1:2]).sum().backward()
    assert states.grad[1].abs().sum() > 0 and states.grad[0].abs().sum() == 0


def test_least_permeability_keeps_the_target_at_one_and_no_prompt_below_it(pipe):
    """`least`: gamma' = least + (1 - least) * gamma. The target keeps 1, an unrelated prompt stays below 1 but
    never below `least`, however its states are moved (differentiable via of_states, with the rescaled slope)."""
    import spm

    prompts = ["snoopy", "a red car on the road", ""]
    paper = Transport([["snoopy"]], pipe)(prompts)[:, 0]
    floored = Transport([["snoopy"]], pipe, least=0.5)
    gamma = floored(prompts)[:, 0]
    assert gamma[0] == pytest.approx(1.0) and torch.all(gamma[1:] < 1) and torch.all(gamma >= 0.5)
    assert gamma.tolist() == pytest.approx((0.5 + 0.5 * paper).tolist())
    states, ids = spm.encode_prompts(pipe, prompts[1:2], return_ids=True)
    states = states.clone().requires_grad_(True)
    floored.of_states(states, ids).sum().backward()
    assert states.grad.abs().sum() > 0
    assert floored.of_states(-100 * states.detach(), ids)[0, 0] >= 0.5  # states far from the target's: the floor


@pytest.mark.parametrize("least", [-0.1, 1.5, float("nan"), True, "half"])
def test_an_impossible_least_permeability_is_one_line(pipe, least):
    with pytest.raises(ValueError, match=r"least must be a number in \[0, 1\]") as caught:
        Transport([["snoopy"]], pipe, least=least)
    assert "\n" not in str(caught.value)
